"""Where a task's archive comes from and the checksum it must have.

The Decathlon's ten archives are built in: the mirror and MD5 sums MONAI's ``DecathlonDataset``
uses. A lab points at its own copy with a setting, the first of these that is given:

* the mirror: ``--mirror URL`` (or the ``HARNESS_DATA_MIRROR`` environment variable, which the
  command line reads into that option), the descriptor's ``fetch.mirror``, MONAI's mirror;
* the MD5 sum: ``--checksums FILE`` (``md5sum`` output: ``<md5>  <archive name>`` per line; or
  ``HARNESS_DATA_CHECKSUMS``), the descriptor's ``fetch.md5``, the table below.

An archive without a known MD5 sum is never downloaded: an archive is untrusted input, and the sum
is what ties the bytes to the ones its publisher put there.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from harness.tasks.descriptor import TaskDescriptor
from selfunet.artifacts import read_user_text
from selfunet.errors import SelfUNetError, clip, quote

#: the environment variables the command line reads into ``--mirror`` and ``--checksums``.
MIRROR_ENV = "HARNESS_DATA_MIRROR"
CHECKSUMS_ENV = "HARNESS_DATA_CHECKSUMS"

# The Medical Segmentation Decathlon's archives as MONAI publishes them: the mirror and the MD5 sums
# are those of MONAI's DecathlonDataset (Project-MONAI/MONAI, monai/apps/datasets.py, the class
# attributes `DecathlonDataset.resource`, https://msd-for-monai.s3-us-west-2.amazonaws.com/<Task>.tar,
# and `DecathlonDataset.md5`). Each archive unpacks to one folder of its own name (MSD layout).
DECATHLON_MIRROR = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
DECATHLON_MD5 = {
    "Task01_BrainTumour.tar": "240a19d752f0d9e9101544901065d872",
    "Task02_Heart.tar": "06ee59366e1e5124267b774dbd654057",
    "Task03_Liver.tar": "a90ec6c4aa7f6a3d087205e23d4e6397",
    "Task04_Hippocampus.tar": "9d24dba78a72977dbd1d2e110310f31b",
    "Task05_Prostate.tar": "35138f08b1efaef89d7424d2bcc928db",
    "Task06_Lung.tar": "8afd997733c7fc0432f71255ba4e52dc",
    "Task07_Pancreas.tar": "4f7080cfca169fa8066d17ce6eb061e4",
    "Task08_HepaticVessel.tar": "641d79e80ec66453921d997fbf12a29c",
    "Task09_Spleen.tar": "410d4a301da4e5b2f6f86ec3ddba524e",
    "Task10_Colon.tar": "bad7a188931dc2f6acf72b08eb6202d0",
}

_MD5 = re.compile(r"[0-9a-fA-F]{32}")
#: a checksum file is a few lines per archive; anything this big is the wrong file.
MAX_CHECKSUMS_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Source:
    """One task's archive: where it is, what it must hash to, and where it unpacks to."""

    task: str
    archive: str
    """file name, e.g. ``Task04_Hippocampus.tar``."""
    location: str
    """an ``http(s)://`` URL, or a local file (a mirror that is a folder or ``file://``)."""
    md5: str
    target: Path
    """the dataset folder the descriptor expects."""

    @property
    def is_local(self) -> bool:
        return not self.location.startswith(("http://", "https://"))


def read_checksums(path: Path) -> dict[str, str]:
    """``md5sum`` output (``<md5>  <name>``, ``*<name>`` for binary mode, ``#`` comments) as name -> md5."""
    text = read_user_text(Path(path), "a checksum file", MAX_CHECKSUMS_BYTES, "save it as UTF-8 text.")
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not _MD5.fullmatch(parts[0]):
            raise SelfUNetError(f"{path}: line {number}: {quote(clip(line, 80))} is not '<md5>  <archive name>' "
                                "(what `md5sum *.tar` prints); fix the line.")
        sums[Path(parts[1].lstrip("*")).name] = parts[0].lower()
    return sums


def _location(mirror: str, archive: str) -> str:
    """The archive's URL under an ``http(s)://`` mirror, or its path under a folder or ``file://`` mirror."""
    if mirror.startswith(("http://", "https://")):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(archive)
    if mirror.startswith("file://"):
        mirror = urllib.parse.unquote(urllib.parse.urlparse(mirror).path)
    elif "://" in mirror:
        raise SelfUNetError(f"mirror {quote(mirror)}: only http://, https://, file:// or a folder can be fetched from.")
    return str(Path(mirror).expanduser().resolve() / archive)


def archive_name(task: TaskDescriptor) -> str:
    return task.fetch.archive or f"{task.dataset.name}.tar"


def known_md5(task: TaskDescriptor, checksums: dict[str, str] | None = None) -> str | None:
    """The MD5 sum the task's archive must have, by the order of the settings (None when none is known)."""
    archive = archive_name(task)
    return ((checksums or {}).get(archive) or task.fetch.md5 or DECATHLON_MD5.get(archive) or None)


def source_for(task: TaskDescriptor, mirror: str | None = None, checksums: dict[str, str] | None = None) -> Source:
    """Where ``task``'s archive is and what it must hash to (``mirror``: ``--mirror``; ``checksums``:
    the ``--checksums`` file read by :func:`read_checksums`)."""
    archive = archive_name(task)
    md5 = known_md5(task, checksums)
    if md5 is None:
        raise SelfUNetError(f"task {task.name}: no MD5 sum is known for {archive}, and nothing is downloaded "
                            f"unchecked; give --checksums FILE (a line '<md5>  {archive}') or `fetch: {{md5: ...}}` in "
                            f"{task.source}.")
    chosen = mirror or task.fetch.mirror or DECATHLON_MIRROR
    return Source(task.name, archive, _location(chosen, archive), md5.lower(), task.dataset)
