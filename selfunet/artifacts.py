"""Typed, versioned JSON artifacts written atomically.

Every stage of the pipeline writes one artifact. Writing goes to a uniquely named temporary file
in the same folder, fsynced, then ``os.replace`` and an fsync of the folder (:func:`atomic_path`),
so neither a killed process nor a power loss leaves a half-written file that a rerun would trust.
Reading validates the schema and turns any problem into a
:class:`~selfunet.errors.SelfUNetError` naming the file, the field and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from selfunet.errors import SelfUNetError, clip


class Artifact(BaseModel):
    """Base of every on-disk object: frozen, no unknown keys, with a schema version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: bump when a field changes meaning; readers refuse newer versions.
    SCHEMA_VERSION: ClassVar[int] = 1
    #: how the user recreates this artifact (used in error messages).
    PRODUCED_BY: ClassVar[str] = "the stage that writes it"

    schema_version: int = 1

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls: type[A], path: Path) -> A:
        path = Path(path)
        if not path.is_file():
            raise SelfUNetError(f"{path} does not exist: run {cls.PRODUCED_BY} first.")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
            raise SelfUNetError(
                f"{path} is not readable JSON ({exc}); delete it and rerun {cls.PRODUCED_BY}."
            ) from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls: type[A], raw: Any, source: str = "<dict>") -> A:
        if isinstance(raw, dict):
            version = raw.get("schema_version", 1)
            if isinstance(version, int) and version > cls.SCHEMA_VERSION:
                raise SelfUNetError(
                    f"{source}: schema_version {version} is newer than this selfunet understands "
                    f"({cls.SCHEMA_VERSION}); upgrade selfunet or rerun {cls.PRODUCED_BY}."
                )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in exc.errors()
            )
            raise SelfUNetError(f"{source} is not a valid {cls.__name__}: {problems}") from exc


A = TypeVar("A", bound=Artifact)


def read_user_text(path: Path, what: str, max_bytes: int, utf8_fix: str) -> str:
    """A small text file a user wrote (a descriptor, a dataset.json), read defensively: unreadable,
    not a regular file (a FIFO would block, a device never ends), far too large for what it claims
    to be, or not UTF-8 (the line is named) are clean errors. The size is checked on the open file
    before reading, and at most ``max_bytes + 1`` bytes are ever read (a sparse 8 GiB file, or one
    that grows while read, costs nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SelfUNetError(f"{path}: cannot read {what} ({exc.strerror or exc}); check its permissions.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SelfUNetError(f"{path}: not a regular file (a folder, pipe or device); {what} is a text file.")
        if st.st_size > max_bytes:
            raise SelfUNetError(f"{path}: {st.st_size} bytes is too big for {what} (at most {max_bytes}); is it the "
                                "right file?")
        data = read_at_most(fd, max_bytes + 1)
    except OSError as exc:
        raise SelfUNetError(f"{path}: cannot read {what} ({exc.strerror or exc}); check its permissions.") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SelfUNetError(f"{path}: more than {max_bytes} bytes is too big for {what}; is it the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SelfUNetError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); {utf8_fix}") \
            from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# -- durable writes -------------------------------------------------------------------------------
#: how temp files are named: ``.<name>.<pid>.<random>.tmp<ending>`` beside the target.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def temp_path(path: Path, ending: str = "") -> Path:
    """A unique sibling of ``path`` for writing it: the writer's pid (so a cleanup can tell whose it
    is) plus random bits (two writers in one process never collide), ending in ``ending`` (image
    and plot writers choose the format from it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{ending}")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (the directory entry, not only the file's bytes)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename itself is still atomic
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, ending: str = "") -> Iterator[Path]:
    """Yield a unique temp path; after the block writes it: fsync, rename over ``path``, fsync the folder.

    Readers see the old file or the complete new one, never a torn one, even after a power loss;
    if the block raises (a full disk, a signal) the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, ending)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None or Path(exc.filename) == tmp:  # name what the user knows: the target
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_failure(path: Path, what: str, exc: Exception) -> OSError:
    """An OSError for a library that hides the file-system error behind its own exception (torch,
    SimpleITK): ENOSPC when the folder's disk is (nearly) full, so the message says so."""
    folder = Path(path).parent
    try:
        full = shutil.disk_usage(folder).free < 64 * 1024 * 1024
    except OSError:
        full = False
    detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, f"{os.strerror(code)}: {what} failed ({clip(detail)})", str(path))


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temp files in ``folder`` left by writers that are gone (their pid no longer runs).

    A live writer's temp file (another process, or this one) is never touched.
    """
    removed = []
    for candidate in Path(folder).glob(".*.tmp*"):
        match = _TEMP.match(candidate.name)
        if match is None or _pid_alive(int(match["pid"])):
            continue
        candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the complete new file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file, so a memory-mapped reader never sees a torn array."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def read_at_most(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes from an open descriptor, however large the file claims or grows to be:
    the one bounded read behind every untrusted text file (read one byte past a size bound to see
    that a file grew past it)."""
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)

