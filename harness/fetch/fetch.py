"""``harness fetch``: a task's dataset from its archive into the folder its descriptor names.

For one task: nothing to do when the folder already holds a ``dataset.json`` (or the task
generates its data); otherwise the archive is taken from the mirror (downloaded beside the
target, resumable, checked; or, from a mirror that is a folder, checked where it lies), unpacked
all or nothing (:mod:`harness.fetch.safe_tar`), and the download removed unless kept. One fetch per
dataset folder at a time: a second one stops at once and says who holds the lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape

from harness.fetch.download import download, file_md5
from harness.fetch.safe_tar import DEFAULT_MAX_BYTES, extract_dataset
from harness.fetch.sources import Source, known_md5, read_checksums, source_for
from harness.tasks.descriptor import TaskDescriptor
from selfunet.errors import SelfUNetError, os_error_message
from selfunet.locks import exclusive


@dataclass(frozen=True)
class FetchOptions:
    mirror: str | None = None
    """``--mirror`` (or ``HARNESS_DATA_MIRROR``): overrides the descriptor's and the built-in mirror."""
    checksums: dict[str, str] | None = None
    """``--checksums FILE`` read by :func:`harness.fetch.sources.read_checksums`: archive name -> MD5."""
    max_bytes: int = DEFAULT_MAX_BYTES
    retries: int = 3
    keep_archive: bool = False


def fetch_options(mirror: str | None, checksums: Path | None, **more: object) -> FetchOptions:
    """The options from the command line's ``--mirror`` and ``--checksums FILE`` (and any other field)."""
    return FetchOptions(mirror=mirror or None, checksums=read_checksums(checksums) if checksums else None,
                        **more)  # type: ignore[arg-type]


def has_data(task: TaskDescriptor) -> bool:
    return task.demo is not None or (task.dataset / "dataset.json").is_file()


def fetchable(task: TaskDescriptor, checksums: dict[str, str] | None = None) -> bool:
    """Whether ``harness fetch`` knows an archive and its checksum for the task."""
    return task.demo is None and known_md5(task, checksums) is not None


def _checked_archive(source: Source, archive: Path, console: Console) -> bool:
    """True when ``archive`` (left by an earlier fetch, or put there by hand) has the right sum;
    a wrong one is deleted, and said so."""
    got = file_md5(archive, console, archive.name)
    if got == source.md5:
        return True
    archive.unlink()
    console.print(escape(f"{archive}: wrong checksum (MD5 {got}, expected {source.md5}); deleted, downloading it "
                         "again."), highlight=False, soft_wrap=True)
    return False


def _obtain(source: Source, options: FetchOptions, console: Console) -> tuple[Path, bool]:
    """The verified archive on disk, and whether it was downloaded here (so is ours to delete)."""
    if source.is_local:
        archive = Path(source.location)
        if not archive.is_file():
            raise SelfUNetError(f"task {source.task}: {archive} does not exist; check the mirror folder (--mirror, "
                                "HARNESS_DATA_MIRROR or fetch.mirror).")
        got = file_md5(archive, console, archive.name)
        if got != source.md5:  # not ours: the file stays, the fetch stops
            raise SelfUNetError(f"{archive}: wrong checksum (MD5 {got}, expected {source.md5}); left as it is (it is "
                                "the mirror's file). Check the mirror's copy or the --checksums entry.")
        return archive, False
    archive = source.target.parent / source.archive
    if archive.is_file() and _checked_archive(source, archive, console):
        return archive, True
    return download(source.location, archive, source.md5, console, retries=options.retries,
                    max_bytes=options.max_bytes), True


def fetch_task(task: TaskDescriptor, options: FetchOptions, console: Console) -> str:
    """Make ``task``'s dataset folder hold its dataset; returns what was done, in words."""
    if task.demo is not None:
        return "generated on first run (nothing to download)"
    if has_data(task):
        return f"already there ({task.dataset})"
    source = source_for(task, options.mirror, options.checksums)
    target = source.target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(target.parent, f".{target.name}.fetch.lock", what=f"the dataset folder {target.name}"):
        if has_data(task):  # another fetch finished while this one waited to look
            return f"already there ({task.dataset})"
        if target.exists() and not (target.is_dir() and not any(target.iterdir())):
            raise SelfUNetError(f"task {task.name}: {target} exists without a dataset.json; move it away (or finish "
                                "it by hand), then rerun: a fetch never unpacks into a folder holding something.")
        archive, ours = _obtain(source, options, console)
        console.print(escape(f"{task.name}: unpacking {archive.name} into {target}"), highlight=False, soft_wrap=True)
        try:
            size = extract_dataset(archive, target, max_bytes=options.max_bytes)
        except SelfUNetError as exc:
            where = "" if not ours else f" The archive stays at {archive} to be looked at (delete it when done)."
            raise SelfUNetError(f"{exc}{where}") from None
        if ours and not options.keep_archive:
            archive.unlink()
    kept = f"; archive kept: {archive}" if ours and options.keep_archive else ""
    return f"fetched into {target} ({decimal(size)} from {source.location}{kept})"


def fetch_tasks(tasks: list[TaskDescriptor], options: FetchOptions, console: Console) -> None:
    """Fetch each task's dataset in turn, a line each; one task's failure does not stop the others,
    and all of them are named at the end."""
    failed = []
    for task in tasks:
        try:
            done = fetch_task(task, options, console)
        except (SelfUNetError, OSError) as exc:  # a full disk, a folder without write permission
            failed.append(task.name)
            message = str(exc) if isinstance(exc, SelfUNetError) else os_error_message(exc)
            console.print(f"[bold red]{escape(task.name)}: error:[/] {escape(message)}", highlight=False,
                          soft_wrap=True)
            continue
        console.print(f"[bold]{escape(task.name)}[/]: {escape(done)}", highlight=False, soft_wrap=True)
    if failed:
        raise SelfUNetError(f"fetch failed for {', '.join(failed)} (see above); rerun the same command to resume.")


def fetch_hint(tasks: list[TaskDescriptor]) -> str:
    """A line for a missing-data message: which of ``tasks`` ``harness fetch`` can fill."""
    names = [t.name for t in tasks if not has_data(t) and fetchable(t)]
    if not names:
        return ""
    return f"\n{', '.join(names)}: `harness fetch {' '.join(names)}` downloads the data (or add --fetch)."
