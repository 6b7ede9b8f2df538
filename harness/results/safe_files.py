"""Files the harness did not write, read without following links; folders it writes, made without them.

A work directory is written by jobs, a scoring output folder by a submission, a prediction folder
by whoever sent it: any of them can hold a symbolic link to a host file (``selection.json ->
~/.ssh/id_rsa``), a link to a host folder (``test_predictions -> /srv/other/labels``), a FIFO
that blocks a reader forever, or a file far larger than what it claims to be. And a results folder
may have been unpacked from somewhere, with ``results/<task>/predictions`` a link to a folder that
an export would then empty. So, at every such boundary:

- a path *below* a trusted root (the work directory, the output folder, the results root: named
  by the user or made by the harness) is opened one component at a time with ``O_NOFOLLOW``
  relative to its parent's descriptor (:func:`open_below`): a link anywhere below the root is a
  :class:`LinkRefused`, and what is finally read is the file those checks saw;
- only regular files are read (``fstat`` of the open descriptor), never more than a stated number
  of bytes, the size checked before the first byte is read;
- a folder the harness writes into is checked the same way, component by component, before it
  is created or emptied (:func:`plain_folder`): ``rmtree`` never runs below a link.

The root itself may be a link (a user may keep ``work/`` on another disk); nothing below it may.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from selfunet.artifacts import read_at_most
from selfunet.errors import SelfUNetError

#: JSON records a job writes (selection.json, seeds.json, summaries) are a few hundred kB at most.
MAX_JSON_BYTES = 64 * 1024 * 1024
_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class LinkRefused(SelfUNetError):
    """A path below a trusted root is a link, or not the kind of file it must be."""


def _parts(root: Path, path: Path) -> list[str]:
    """The components of ``path`` below ``root`` (``path`` absolute or relative to ``root``)."""
    path = Path(path)
    rel = path.relative_to(root) if path.is_absolute() else path
    parts = list(rel.parts)
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise SelfUNetError(f"{path}: not a path below {root} (the harness's own error: please report it).")
    return parts


def open_below(root: Path, path: Path, what: str, directory: bool = False) -> int:
    """A descriptor of ``root/path`` opened without following any link below ``root``.

    Every folder on the way is opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to the one above;
    the last component with ``O_NOFOLLOW`` (and ``O_NONBLOCK``: a FIFO does not block the open).
    A link is a :class:`LinkRefused` naming the link and ``what``; a missing file is a
    ``FileNotFoundError``. The caller closes the descriptor.
    """
    root = Path(root)
    parts = _parts(root, path)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = _FLAGS | (os.O_DIRECTORY if (directory or not last) else os.O_NONBLOCK)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                here = root.joinpath(*parts[: i + 1])
                if os.path.islink(here):
                    raise LinkRefused(f"{here}: a symbolic link (to {os.readlink(here)}); {what} is read only from "
                                      "a real file, never through a link. Remove the link (the harness did not "
                                      "make it) and rerun.") from None
                if isinstance(exc, FileNotFoundError):
                    raise FileNotFoundError(exc.errno, exc.strerror, str(here)) from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_below(root: Path, path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``root/path`` (no link below ``root``), at most ``max_bytes``."""
    fd = open_below(root, path, what)
    try:
        return read_fd(fd, Path(root) / path, what, max_bytes)
    finally:
        os.close(fd)


def read_fd(fd: int, shown: Path, what: str, max_bytes: int) -> bytes:
    """All of an open regular file, refused (before reading) when it is not one or is over ``max_bytes``."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise LinkRefused(f"{shown}: not a regular file (a folder, FIFO, socket or device); {what} must be a file.")
    if st.st_size > max_bytes:
        raise SelfUNetError(f"{shown}: {st.st_size} bytes is too big for {what} (at most {max_bytes}).")
    data = read_at_most(fd, max_bytes + 1)
    if len(data) > max_bytes:
        raise SelfUNetError(f"{shown}: grew past {max_bytes} bytes while read; {what} is not that big.")
    return data


def read_json_below(root: Path, path: Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """``root/path`` parsed as JSON (no link below ``root``); unreadable JSON is a clean error."""
    data = read_below(root, path, what, max_bytes)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SelfUNetError(f"{Path(root) / path}: not readable JSON ({exc}); {what} was damaged or not written by "
                            "selfunet: rerun the step that writes it.") from None


def copy_below(root: Path, path: Path, target: Path, what: str, max_bytes: int) -> None:
    """Copy the regular file ``root/path`` (no link below ``root``) to ``target`` (created, never
    followed: an existing ``target`` is an error), at most ``max_bytes``, in chunks."""
    fd = open_below(root, path, what)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LinkRefused(f"{Path(root) / path}: not a regular file; {what} must be a file.")
        if st.st_size > max_bytes:
            raise SelfUNetError(f"{Path(root) / path}: {st.st_size} bytes is too big for {what} (at most "
                                f"{max_bytes}).")
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                      | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            copied = 0
            while chunk := os.read(fd, 1 << 20):
                copied += len(chunk)
                if copied > max_bytes:
                    raise SelfUNetError(f"{Path(root) / path}: grew past {max_bytes} bytes while copied.")
                os.write(out, chunk)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def check_no_links(root: Path, path: Path, what: str) -> Path:
    """``root/path`` after checking that no component below ``root`` is a link and the last is a
    regular file (for readers that take a path: a library's image or JSON loader)."""
    os.close(open_below(root, path, what))
    full = Path(root) / path
    if not stat.S_ISREG(os.lstat(full).st_mode):
        raise LinkRefused(f"{full}: not a regular file; {what} must be a file.")
    return full


def plain_folder(root: Path, path: Path, what: str, create: bool = True, missing_ok: bool = False) -> Path:
    """``root/path`` as a real folder: every component below ``root`` is lstat'ed and must be a
    folder, never a link (a link is refused, never followed and never emptied); missing ones are
    created when ``create`` (else ``FileNotFoundError``, or with ``missing_ok`` the check stops
    there). ``root`` itself is the user's (it may be a link) and is created too."""
    root = Path(root)
    if create:
        root.mkdir(parents=True, exist_ok=True)
    current = root
    for part in _parts(root, path):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if missing_ok and not create:
                return root / path
            if not create:
                raise
            current.mkdir()
            continue
        if stat.S_ISLNK(st.st_mode):
            raise LinkRefused(f"{current}: a symbolic link (to {os.readlink(current)}) where {what} keeps a folder; "
                              "the harness writes (and replaces) only folders it made and never follows a link "
                              "there. Remove the link and rerun.")
        if not stat.S_ISDIR(st.st_mode):
            raise LinkRefused(f"{current}: not a folder, where {what} keeps one; move it away and rerun.")
    return current


def fresh_folder(root: Path, path: Path, what: str) -> Path:
    """``root/path`` emptied and made again, only after checking that no part of it below ``root``
    is a link (:func:`~harness.results.safe_files.plain_folder`): nothing is deleted through one."""
    plain_folder(root, path.parent, what)
    target = root / path
    if os.path.lexists(target):
        plain_folder(root, path, what, create=False)
        shutil.rmtree(target)
    target.mkdir()
    return target
