"""Unpacking an untrusted tar archive into one folder, or refusing it whole.

An archive is read twice, as a stream (plain, ``.gz``, ``.bz2`` or ``.xz``):

1. **Scan.** Every header is checked before anything is written, and the archive is refused when
   a member
   * has an absolute name (``/etc/x``; Python's ``data`` filter would strip the ``/`` and carry on),
     a ``..`` component, or a name too long for the file system;
   * is a symbolic link whose target is absolute, leaves the archive's root, or passes through
     another symbolic link (a chain that resolves outside although each link looks harmless);
   * is a hard link to anything but a regular file earlier in the archive;
   * would be written through a symbolic link (``link/file``), or names a path twice;
   * is a device file, a FIFO, a sparse file or any other special kind;
   * makes the declared sizes add up past the limit, or the member count pass its own limit.

   The scan needs no disk and no lookups on the disk (``os.path.realpath`` is what the published
   bypasses of the ``data`` filter fool), so a link is judged by the archive's own members.
2. **Extract** into a temporary folder beside the target (same file system), with Python's
   ``data`` filter as a second guard (it also drops set-uid bits and ownership). The members must
   be exactly those of the scan.

Both passes read through :class:`_Bounded`, which counts the bytes of the (decompressed) tar stream
and stops at the declared sizes plus a small allowance for headers: a header cannot claim little
and deliver much, and a multi-gigabyte ``pax`` or long-name header is stopped before it is read
into memory. On any refusal or error the temporary folder is removed: nothing half-extracted is
left. Only a complete, checked extraction is renamed into place.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rich.filesize import decimal

from selfunet.artifacts import fsync_dir
from selfunet.errors import SelfUNetError, clip, quote

#: the default limit on the unpacked size (the largest Decathlon archive, Liver, is under 30 GB).
DEFAULT_MAX_BYTES = 64 * 1000**3
#: the most members an archive may have (a Decathlon task has a few thousand files at most).
DEFAULT_MAX_MEMBERS = 200_000
#: tar stream bytes allowed beyond the declared sizes: fixed, plus per member (header blocks,
#: padding, pax records, long names).
STREAM_ALLOWANCE = 16 * 1024 * 1024
STREAM_PER_MEMBER = 4 * 1024
#: file-system limits a name is held to before it reaches the disk.
MAX_NAME_BYTES = 4000
MAX_COMPONENT_BYTES = 255


class _Bounded:
    """A read-only stream that refuses to go past ``limit()`` bytes (the limit may grow as the scan goes)."""

    def __init__(self, raw: BinaryIO, limit: Callable[[], int], what: str) -> None:
        self.raw, self.limit, self.what, self.count = raw, limit, what, 0

    def read(self, size: int = -1) -> bytes:
        allowed = self.limit() - self.count
        if size < 0 or size > allowed + 1:
            size = allowed + 1
        data = self.raw.read(max(size, 0))
        self.count += len(data)
        if self.count > self.limit():
            raise SelfUNetError(f"{self.what}: refused: the tar stream goes on past what its headers declare "
                                f"(over {decimal(self.limit())}); a header lies about a size, or the archive is a "
                                "decompression bomb. Nothing was extracted.")
        return data


def _open(path: Path) -> BinaryIO:
    """The archive's decompressed bytes (the compression told by its first bytes, not by its name)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    return open(path, "rb")


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: str
    size: int
    link: str


def _kind(member: tarfile.TarInfo) -> str:
    if member.issparse():
        return "sparse"
    for kind, test in (("file", member.isreg), ("dir", member.isdir), ("symlink", member.issym),
                       ("hardlink", member.islnk)):
        if test():
            return kind
    return "device file or FIFO" if member.ischr() or member.isblk() or member.isfifo() else "special"


def _normal(name: str, what: str) -> str:
    """``name`` as a clean relative POSIX path, or a refusal."""
    if not name or "\0" in name:
        raise SelfUNetError(f"{what}: an empty or NUL-containing member name")
    if name.startswith(("/", "\\")) or (len(name) > 2 and name[0].isalpha() and name[1] == ":" and name[2] in "/\\"):
        raise SelfUNetError(f"{what}: member {quote(name)} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SelfUNetError(f"{what}: member {quote(name)} climbs out with '..'")
    if len(name.encode()) > MAX_NAME_BYTES or any(len(p.encode()) > MAX_COMPONENT_BYTES for p in parts):
        raise SelfUNetError(f"{what}: member {quote(clip(name, 120))} has a name too long for a file system")
    return "/".join(parts)


def _link_target(entry: _Entry, symlinks: set[str], what: str) -> str:
    """Where a symbolic link points, as a path inside the root, walked one component at a time: it
    must not leave the root, nor pass through another symbolic link (whose own target would then
    decide where it ends up)."""
    link = entry.link
    if not link or link.startswith("/") or "\0" in link:
        raise SelfUNetError(f"{what}: symbolic link {quote(entry.name)} -> {quote(link)} points to an absolute path")
    stack = entry.name.split("/")[:-1]
    for part in link.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                raise SelfUNetError(f"{what}: symbolic link {quote(entry.name)} -> {quote(link)} points outside "
                                    "the archive's folder")
            stack.pop()
            continue
        stack.append(part)
        if "/".join(stack) in symlinks and "/".join(stack) != entry.name:
            raise SelfUNetError(f"{what}: symbolic link {quote(entry.name)} -> {quote(link)} passes through the "
                                f"symbolic link {quote('/'.join(stack))} (link chains are refused)")
    return "/".join(stack)


def _scan(path: Path, max_bytes: int, max_members: int) -> list[_Entry]:
    """Pass 1: every member's header checked, nothing written (see the module docstring)."""
    what = f"{path.name}: refused"
    entries: list[_Entry] = []
    declared = 0

    def limit() -> int:
        return declared + STREAM_ALLOWANCE + STREAM_PER_MEMBER * (len(entries) + 1)

    seen: dict[str, str] = {}
    with _open(path) as raw:
        try:
            with tarfile.open(fileobj=_Bounded(raw, limit, path.name), mode="r|") as archive:
                for member in archive:
                    if len(entries) >= max_members:
                        raise SelfUNetError(f"{what}: more than {max_members} members")
                    kind = _kind(member)
                    if kind in ("sparse", "device file or FIFO", "special"):
                        raise SelfUNetError(f"{what}: member {quote(member.name)} is a {kind}")
                    name = _normal(member.name, what)
                    size = member.size if kind == "file" else 0
                    declared += size
                    if declared > max_bytes:
                        raise SelfUNetError(f"{what}: the members declare more than the limit of {decimal(max_bytes)} "
                                            f"unpacked (reached at {quote(clip(member.name, 120))}); raise "
                                            "--max-unpacked-gb if the archive is right.")
                    if name in seen and not (kind == "dir" and seen[name] == "dir"):
                        raise SelfUNetError(f"{what}: member {quote(name)} appears twice")
                    if kind == "hardlink":
                        target = _normal(member.linkname, what)
                        if seen.get(target) != "file":
                            raise SelfUNetError(f"{what}: hard link {quote(name)} -> {quote(member.linkname)} does "
                                                "not point to a regular file earlier in the archive")
                    seen[name] = kind
                    entries.append(_Entry(name, kind, size, member.linkname if kind == "symlink" else (
                        _normal(member.linkname, what) if kind == "hardlink" else "")))
        except tarfile.TarError as exc:
            raise SelfUNetError(f"{path}: not a readable tar archive ({exc}).") from None
    symlinks = {e.name for e in entries if e.kind == "symlink"}
    for entry in entries:
        parents = entry.name.split("/")[:-1]
        through = next(("/".join(parents[:i]) for i in range(1, len(parents) + 1)
                        if "/".join(parents[:i]) in symlinks), None)
        if through is not None:
            raise SelfUNetError(f"{what}: member {quote(entry.name)} would be written through the symbolic link "
                                f"{quote(through)}")
        if entry.kind == "symlink":
            _link_target(entry, symlinks, what)
        if entry.kind == "hardlink" and any(entry.link == s or entry.link.startswith(s + "/") for s in symlinks):
            raise SelfUNetError(f"{what}: hard link {quote(entry.name)} goes through a symbolic link")
    return entries


def _extract(path: Path, folder: Path, entries: list[_Entry]) -> None:
    """Pass 2: exactly the scanned members, with the ``data`` filter, through the same byte bound."""
    bound = sum(e.size for e in entries) + STREAM_ALLOWANCE + STREAM_PER_MEMBER * (len(entries) + 1)
    expected = iter(entries)

    def checked(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        for member in archive:
            entry = next(expected, None)
            kind = _kind(member)
            name = _normal(member.name, f"{path.name}: refused")
            size = member.size if kind == "file" else 0
            if entry is None or (entry.name, entry.kind, entry.size) != (name, kind, size):
                raise SelfUNetError(f"{path.name}: refused: the archive read differently the second time "
                                    f"({quote(member.name)}); it changed on disk while being unpacked.")
            yield member

    with _open(path) as raw:
        try:
            with tarfile.open(fileobj=_Bounded(raw, lambda: bound, path.name), mode="r|") as archive:
                extras = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                archive.extractall(folder, members=checked(archive), **extras)
        except tarfile.TarError as exc:  # the data filter's refusals are TarErrors too
            raise SelfUNetError(f"{path.name}: refused while unpacking ({exc}); nothing was kept.") from None


def _dataset_root(folder: Path, archive: Path) -> Path:
    """The dataset folder inside an extraction: ``dataset.json`` at the top, or in its one folder
    (macOS ``._*`` litter beside it is ignored)."""
    if (folder / "dataset.json").is_file():
        return folder
    tops = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(tops) == 1 and tops[0].is_dir() and not tops[0].is_symlink() and (tops[0] / "dataset.json").is_file():
        return tops[0]
    names = ", ".join(sorted(p.name for p in tops)[:5]) or "nothing"
    raise SelfUNetError(f"{archive.name}: refused: it holds no dataset folder (a dataset.json at its top or in its "
                        f"one top folder; found {names}).")


def unpack(archive: Path, folder: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
           max_members: int = DEFAULT_MAX_MEMBERS) -> int:
    """Scan ``archive``, then unpack it into the existing ``folder``; returns the unpacked bytes. On a
    refusal during the scan nothing is written; a caller that needs all or nothing unpacks into a
    temporary folder and removes it on an error (as :func:`extract_dataset` does)."""
    archive, folder = Path(archive), Path(folder)
    entries = _scan(archive, max_bytes, max_members)
    total = sum(e.size for e in entries)
    free = shutil.disk_usage(folder).free
    if total + 64 * 1024 * 1024 > free:
        raise SelfUNetError(f"{archive.name}: unpacks to {decimal(total)} but {folder} has {decimal(free)} free; "
                            "free some space or pass --data-root DIR on a larger disk.")
    _extract(archive, folder, entries)
    return total


def extract_dataset(archive: Path, target: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                    max_members: int = DEFAULT_MAX_MEMBERS) -> int:
    """Unpack ``archive`` so its dataset folder becomes ``target`` (which must not exist, or be
    empty); returns the unpacked bytes. All or nothing (see the module docstring)."""
    archive, target = Path(archive), Path(target)
    work = target.parent / f".{target.name}.extracting"
    shutil.rmtree(work, ignore_errors=True)  # a killed earlier run's (the caller holds the fetch lock)
    work.mkdir()
    try:
        total = unpack(archive, work, max_bytes=max_bytes, max_members=max_members)
        root = _dataset_root(work, archive)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        root.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fsync_dir(target.parent)
    return total
