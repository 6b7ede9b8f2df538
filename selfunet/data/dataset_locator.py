"""Finding a dataset folder from what a user types: a path, an nnU-Net dataset name or an id.

nnU-Net v2 keeps its datasets in ``$nnUNet_raw/Dataset###_Name`` and its users name them by
``Dataset004_Hippocampus`` or just ``4``. Every command and descriptor that takes a dataset
accepts those too, beside a plain path:

* a path (relative to the current folder, or to the descriptor that names it) is taken when it is
  a folder;
* ``Dataset004_Hippocampus``, ``Dataset004``, ``004`` or ``4`` is looked up under the nnU-Net raw
  folder (``--nnunet-raw DIR``, or the environment variable ``nnUNet_raw`` that the command line
  reads into that option): the exact name, else the one ``Dataset004_*`` folder there;
* under a data root (``harness run --data-root DIR``) a Decathlon name and an nnU-Net name stand for
  each other: ``Task04_Hippocampus`` is also found as ``DIR/Dataset004_Hippocampus`` (the name
  ``nnUNetv2_convert_MSD_dataset`` gives it) and the other way round.

A folder that holds a ``dataset.json`` wins over one that does not. When nothing is found the
error names every place looked at and why each was passed over. The library never reads the
environment itself: the nnU-Net raw folder is a parameter, filled from ``nnUNet_raw`` by the command
line only (docs/explanation/design.md#paths).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from selfunet.errors import SelfUNetError, clip, quote

#: the environment variable nnU-Net v2 reads its raw-data folder from (and so do our command lines).
NNUNET_RAW_ENV = "nnUNet_raw"
#: ``4``, ``004``: an nnU-Net dataset id (1 to 999).
_ID = re.compile(r"\d{1,3}")
#: ``Dataset004`` or ``Dataset004_Hippocampus``.
_DATASET_NAME = re.compile(r"Dataset(?P<id>\d{3})(?:_(?P<name>.+))?")
#: ``Task04_Hippocampus``: a Decathlon task folder (nnU-Net v1's naming).
_TASK_NAME = re.compile(r"Task(?P<id>\d{2,3})_(?P<name>.+)")


def nnunet_id(reference: str | int | Path) -> int | None:
    """The nnU-Net dataset id ``reference`` names (``4``, ``"004"``, ``"Dataset004_Hippocampus"``), else None.

    Only a bare name counts: ``data/Dataset004_Hippocampus`` is a path, not an id.
    """
    text = str(reference)
    if isinstance(reference, Path) and len(reference.parts) != 1:
        return None
    if "/" in text:
        return None
    if _ID.fullmatch(text):
        return int(text) if 0 < int(text) < 1000 else None
    match = _DATASET_NAME.fullmatch(text)
    return int(match["id"]) if match else None


@dataclass(frozen=True)
class DatasetLookup:
    """Where a dataset reference led: the folder found (or the first place it would be) and every candidate."""

    reference: str
    path: Path
    """the folder found; when none was, the first candidate (what a message about the folder names)."""
    found: bool
    looked: tuple[tuple[Path, str], ...]
    """``(candidate, what was there)`` for every place looked at, in order."""

    def where_looked(self) -> str:
        """Every candidate with what was there, as one line per candidate."""
        return "\n".join(f"  - {path}: {why}" for path, why in self.looked)

    def message(self) -> str:
        return (f"dataset {quote(self.reference)}: not found; looked at:\n{self.where_looked()}\n"
                "Pass the dataset folder, or an nnU-Net dataset name or id (Dataset004_Hippocampus, 4) with "
                f"--nnunet-raw DIR or the {NNUNET_RAW_ENV} environment variable set.")


def _candidate(path: Path) -> str | None:
    """None when ``path`` is a usable dataset folder; else what is there instead."""
    try:
        if not path.exists():
            return "no such folder"
        if not path.is_dir():
            return "not a folder"
        if not (path / "dataset.json").is_file():
            return "a folder without dataset.json"
    except OSError as exc:  # a name too long, no permission to look
        return f"cannot be read ({exc.strerror or exc})"
    return None


def _by_id(root: Path, number: int, name: str | None) -> list[Path]:
    """``root/Dataset###_name`` when a name is given, else every ``root/Dataset###_*`` folder (sorted)."""
    if name is not None:
        return [root / f"Dataset{number:03d}_{name}"]
    try:
        return sorted(p for p in root.glob(f"Dataset{number:03d}_*") if p.is_dir())
    except OSError:
        return []


def _decide(reference: str, candidates: list[tuple[Path, str | None]]) -> DatasetLookup:
    """The first usable candidate; else the first existing folder (its check names what it lacks); else none."""
    looked = tuple((path, why or "a dataset folder") for path, why in candidates)
    for path, why in candidates:
        if why is None:
            return DatasetLookup(reference, path, True, looked)
    for path, why in candidates:
        if why == "a folder without dataset.json":
            return DatasetLookup(reference, path, True, looked)
    first = candidates[0][0] if candidates else Path(reference)
    return DatasetLookup(reference, first, False, looked)


def _nnunet_candidates(root: Path, number: int, name: str | None, what: str) -> list[tuple[Path, str | None]]:
    if not root.is_dir():
        return [(root / (f"Dataset{number:03d}_{name}" if name else f"Dataset{number:03d}_*"),
                 f"not looked at: {root} is not a folder")]
    found = _by_id(root, number, name)
    if not found:
        return [(root / f"Dataset{number:03d}_*", f"no {what} folder Dataset{number:03d}_* there")]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise SelfUNetError(f"dataset id {number}: {root} holds {len(found)} folders with that id ({names}); "
                            "name one in full (e.g. " + found[0].name + ").")
    return [(p, _candidate(p)) for p in found]


def lookup_dataset(reference: str | int | Path, *, base: Path | None = None,
                   nnunet_raw: Path | None = None) -> DatasetLookup:
    """Where ``reference`` (a path, ``Dataset004_Hippocampus``, ``Dataset004`` or ``4``) leads.

    ``base`` is the folder a relative path is relative to (default: the current folder);
    ``nnunet_raw`` the nnU-Net raw folder (``--nnunet-raw``, or ``$nnUNet_raw`` read by the command
    line). Never raises for a missing folder: :attr:`DatasetLookup.found` says, and
    :meth:`DatasetLookup.message` names every candidate. Raises only when an id is ambiguous.
    """
    text = str(reference)
    if not text:
        raise SelfUNetError("dataset: empty; give a folder, an nnU-Net dataset name (Dataset004_Hippocampus) or id.")
    base = Path.cwd() if base is None else Path(base)
    try:
        as_path = (base / Path(text).expanduser()).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a name too long, a symlink loop, a NUL byte
        raise SelfUNetError(f"dataset {quote(text)}: not a usable path ({exc}).") from None
    candidates: list[tuple[Path, str | None]] = [(as_path, _candidate(as_path))]
    number = nnunet_id(reference)
    if number is not None:
        match = _DATASET_NAME.fullmatch(text)
        name = match["name"] if match else None
        if nnunet_raw is None:
            candidates.append((Path(f"${NNUNET_RAW_ENV}") / (text if name else f"Dataset{number:03d}_*"),
                               f"not looked at: {NNUNET_RAW_ENV} is not set (set it, or pass --nnunet-raw DIR)"))
        else:
            candidates += _nnunet_candidates(Path(nnunet_raw).expanduser().resolve(), number, name, "nnU-Net")
    return _decide(text, candidates)


def locate_dataset(reference: str | int | Path, *, base: Path | None = None, nnunet_raw: Path | None = None) -> Path:
    """The dataset folder ``reference`` names, or :class:`SelfUNetError` naming every place looked at.

    A folder without ``dataset.json`` is returned as found (the caller's check says what it lacks).
    """
    lookup = lookup_dataset(reference, base=base, nnunet_raw=nnunet_raw)
    if not lookup.found:
        raise SelfUNetError(lookup.message())
    return lookup.path


def lookup_in_root(root: Path, reference: str) -> DatasetLookup:
    """``--data-root DIR``: the dataset ``reference`` (a folder name or an nnU-Net id/name) under ``root``.

    Looks at ``root/<name>``, then the other naming of the same dataset: ``Task04_Hippocampus`` ->
    ``Dataset004_Hippocampus`` (then any ``Dataset004_*``), ``Dataset004_Hippocampus`` ->
    ``Task04_Hippocampus``; an id ``4`` -> the one ``Dataset004_*``.
    """
    root = Path(root).expanduser().resolve()
    name = Path(str(reference)).name
    candidates: list[tuple[Path, str | None]] = []
    if not _ID.fullmatch(name):
        candidates.append((root / name, _candidate(root / name)))
    task = _TASK_NAME.fullmatch(name)
    dataset = _DATASET_NAME.fullmatch(name)
    if task is not None:
        number = int(task["id"])
        exact = root / f"Dataset{number:03d}_{task['name']}"
        candidates.append((exact, _candidate(exact)))
        candidates += [c for c in _nnunet_candidates(root, number, None, "nnU-Net") if c[0] != exact]
    elif dataset is not None and dataset["name"] and int(dataset["id"]) < 100:
        twin = root / f"Task{int(dataset['id']):02d}_{dataset['name']}"
        candidates.append((twin, _candidate(twin)))
    elif dataset is not None or _ID.fullmatch(name):
        candidates += _nnunet_candidates(root, int(dataset["id"] if dataset else name), None, "nnU-Net")
    return _decide(clip(str(reference)), candidates)
