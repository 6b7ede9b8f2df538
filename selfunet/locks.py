"""One writer per folder: an exclusive, advisory lock that says who holds it.

Two ``selfunet run`` (or two ``harness run``) on one work directory would both write the same
checkpoints and markers and trust each other's half-finished files. ``flock`` on a lock file
inside the folder prevents that: the kernel drops the lock when its holder dies (even by
SIGKILL), so a lock is never left stale, and the file keeps the holder's pid, host and start time
for the message the second writer prints. The file itself stays (deleting it would race with the
next writer); only the ``flock`` counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from selfunet.errors import SelfUNetError, clip

#: the lock of a work directory (``selfunet run``; ``harness run`` per task).
WORK_LOCK = ".selfunet.lock"
#: the lock of one fold's training folder (``selfunet train``).
TRAIN_LOCK = ".train.lock"


def owner_record() -> dict:
    """Who this process is, as a marker or lock file records it."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": clip(" ".join(sys.argv), 300)}


def describe_owner(owner: dict) -> str:
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since {owner.get('since', '?')}"
            + (f" ({owner['command']})" if owner.get("command") else ""))


def owner_alive(owner: dict | None) -> bool:
    """False when ``owner`` ran on this host and its pid is gone (a crashed or killed run).

    An owner on another host cannot be probed; it counts as alive (the lock decides there).
    """
    if not owner or owner.get("host") != socket.gethostname():
        return bool(owner)
    try:
        pid = int(owner.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


@contextlib.contextmanager
def exclusive(folder: Path, name: str = WORK_LOCK, what: str = "this folder") -> Iterator[Path]:
    """Hold ``folder/name`` exclusively for the ``with`` block, or raise SelfUNetError saying who has it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / name, "a+")  # noqa: SIM115 (held for the whole block)
    except OSError as exc:
        raise SelfUNetError(f"{folder / name}: cannot create the lock file ({exc.strerror or exc}); "
                            "check the folder's permissions and free space.") from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                owner = json.loads(handle.read() or "{}")
            except ValueError:
                owner = {}
            raise SelfUNetError(
                f"{folder} is in use: {what} is being written by {describe_owner(owner)}; wait for it to finish or "
                "stop it (a second writer would corrupt its results), or use another folder."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(owner_record()) + "\n")
        handle.flush()
        yield folder / name
    finally:
        handle.close()  # releases the flock
