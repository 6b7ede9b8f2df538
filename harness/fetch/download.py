"""Downloading one archive: resumable, bounded, shown, and checked against its MD5 sum.

* The bytes go to ``<archive>.part`` beside the final name. A dropped connection is retried from
  where it stopped (an HTTP ``Range`` request, a few times with a growing pause); when the retries
  run out the ``.part`` file stays and the next ``harness fetch`` resumes it. A server that ignores
  ``Range`` (answers 200) is read from the start again.
* The MD5 sum is computed while the bytes arrive (the part already on disk first), so a finished
  download is checked without reading it again. A wrong sum deletes the file and says so; only a
  file with the right sum gets the final name.
* A download larger than the size limit is stopped: a mirror is not trusted to end.
* Progress: a rich bar with size, rate and time left on a terminal; plain lines every
  :data:`PLAIN_INTERVAL_S` seconds elsewhere (a log file, CI), where a bar would print only once.

Standard library only (``urllib``): one GET with one header is all this needs.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from selfunet import __version__
from selfunet.errors import SelfUNetError

CHUNK = 1024 * 1024
#: seconds without a byte before a connection counts as dropped.
TIMEOUT_S = 60.0
#: plain progress lines off a terminal: one every this many seconds (and one at the end).
PLAIN_INTERVAL_S = 10.0
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)")


class _Dropped(Exception):
    """The connection ended before the file did (retried, resuming)."""


class Meter:
    """Bytes done of a total, as a rich bar on a terminal or as plain lines every few seconds elsewhere."""

    def __init__(self, console: Console, label: str, verb: str = "downloading") -> None:
        self.console, self.label, self.verb = console, label, verb
        self.plain = not console.is_terminal
        self.total: int | None = None
        self.done = self.start_done = 0
        self.start = self.last = time.monotonic()
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> Meter:
        if not self.plain:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(), console=self.console,
                                      transient=False)
            self._progress.start()
            self._task = self._progress.add_task(escape(f"{self.verb} {self.label}"), total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif exc[0] is None:
            self._line(final=True)

    def reset(self, done: int, total: int | None) -> None:
        """A new response: ``done`` bytes are on disk of ``total`` (None: unknown)."""
        self.done, self.total = done, total
        self.start_done, self.start = done, time.monotonic()
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)

    def advance(self, size: int) -> None:
        self.done += size
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)
        elif time.monotonic() - self.last >= PLAIN_INTERVAL_S:
            self._line()

    def _line(self, final: bool = False) -> None:
        self.last = now = time.monotonic()
        rate = (self.done - self.start_done) / max(now - self.start, 1e-6)
        of = f" of {decimal(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        state = "done" if final else "at"
        line = f"{self.verb} {self.label}: {state} {decimal(self.done)}{of}, {decimal(int(rate))}/s"
        self.console.print(escape(line), highlight=False, soft_wrap=True)


def file_md5(path: Path, console: Console, label: str) -> str:
    """The MD5 sum of a file on disk, with progress (a Decathlon archive is up to 28 GB)."""
    digest = hashlib.md5(usedforsecurity=False)
    with Meter(console, label, "checking") as meter, open(path, "rb") as f:
        meter.reset(0, path.stat().st_size)
        while block := f.read(CHUNK):
            digest.update(block)
            meter.advance(len(block))
    return digest.hexdigest()


def _request(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"selfunet-harness/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_from(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """(where the body starts, the file's full size or None) from a 200 or 206 answer."""
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
        if match is None or match[1] is None:
            raise _Dropped(f"a partial answer without a usable Content-Range ({response.headers.get('Content-Range')})")
        return int(match[1]), None if match[3] == "*" else int(match[3])
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _append(url: str, part: Path, digest: hashlib._Hash, meter: Meter, max_bytes: int, timeout: float):
    """One request from the end of ``part``; returns the digest once the whole file is there.

    Raises :class:`_Dropped` when the connection ends early (the caller retries).
    """
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _request(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # asked beyond the end: the part is the whole file, or not that file
            match = _CONTENT_RANGE.fullmatch((exc.headers.get("Content-Range") or "").strip())
            if match is not None and match[3] != "*" and int(match[3]) == offset:
                return digest
            part.unlink()
            raise _Dropped("the server's file is shorter than the partial download; starting again") from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Dropped(f"HTTP {exc.code} {exc.reason}") from None
        raise SelfUNetError(f"{url}: HTTP {exc.code} {exc.reason}; check the mirror (--mirror, "
                            "HARNESS_DATA_MIRROR or the descriptor's fetch.mirror) and the archive name.") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _Dropped(f"cannot connect ({reason})") from None
    with response:
        start, total = _total_from(response, offset)
        if start != offset:  # 200 to a Range request (or a shifted 206): start the file again
            digest = hashlib.md5(usedforsecurity=False)
            part.write_bytes(b"")
            offset = 0
        if total is not None and total > max_bytes:
            raise SelfUNetError(f"{url}: the archive is {decimal(total)}, over the size limit of {decimal(max_bytes)}; "
                                "raise --max-unpacked-gb if that is right.")
        meter.reset(offset, total)
        size = offset
        with open(part, "ab") as out:
            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Dropped(f"connection lost ({exc or type(exc).__name__})") from None
                if not block:
                    break
                size += len(block)
                if size > max_bytes or (total is not None and size > total):
                    out.close()
                    part.unlink()
                    raise SelfUNetError(f"{url}: the server sent more than " + (
                        f"the {decimal(total)} it announced" if total is not None and size > total else
                        f"the size limit of {decimal(max_bytes)}") + "; the partial file was deleted.")
                out.write(block)
                digest.update(block)
                meter.advance(len(block))
    if total is not None and size < total:
        raise _Dropped(f"the connection ended at {decimal(size)} of {decimal(total)}")
    return digest


def download(url: str, dest: Path, md5: str, console: Console, *, retries: int = 3, max_bytes: int,
             timeout: float = TIMEOUT_S, pause_s: float = 1.0) -> Path:
    """``url`` into ``dest`` (through ``dest.part``, resumed when present), checked against ``md5``."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    if part.exists():  # resume: hash what is already there once, then keep hashing what arrives
        console.print(escape(f"resuming {dest.name} from {decimal(part.stat().st_size)} ({part})"), highlight=False,
                      soft_wrap=True)
        with open(part, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
    failures = 0
    with Meter(console, dest.name) as meter:
        while True:
            try:
                digest = _append(url, part, digest, meter, max_bytes, timeout)
                break
            except _Dropped as exc:
                if not part.exists():
                    digest = hashlib.md5(usedforsecurity=False)
                if failures >= retries:
                    have = part.stat().st_size if part.exists() else 0
                    raise SelfUNetError(f"{url}: download interrupted ({exc}) after {failures + 1} attempt(s); "
                                        f"{decimal(have)} kept in {part}: rerun the same command to resume.") from None
                failures += 1
                console.print(escape(f"{dest.name}: {exc}; retrying ({failures}/{retries})"), highlight=False,
                              soft_wrap=True)
                time.sleep(pause_s * 2 ** (failures - 1))
    got = digest.hexdigest()
    if got != md5.lower():
        part.unlink(missing_ok=True)
        raise SelfUNetError(f"{url}: wrong checksum: MD5 {got}, expected {md5.lower()}; the download ({part}) was "
                            "deleted. Rerun to download it again; if it happens again, the mirror holds another file "
                            "(check --mirror and --checksums).")
    os.replace(part, dest)
    return dest
