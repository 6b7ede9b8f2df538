"""Reading a dataset folder in either of the field's two layouts.

* **Medical Segmentation Decathlon (MSD)**: ``dataset.json`` with ``modality`` (``{"0": "CT"}``),
  ``labels`` (``{"0": "background", "1": "liver"}``), ``training`` (``[{"image", "label"}]``) and
  ``test`` (paths). A multi-channel case is one 4D NIfTI.
* **nnU-Net v2**: ``dataset.json`` with ``channel_names``, ``labels`` (``{"background": 0}``) and
  ``file_ending``; ``imagesTr/<case>_0000<ending>`` per channel, ``labelsTr/<case><ending>``,
  ``imagesTs/``.

Labels may also be declared as regions (nnU-Net v2: a name mapped to a list of values, plus
``regions_class_order``; MSD: an extra ``regions`` object next to ``labels``), and a label named
``ignore`` marks unannotated voxels; see :mod:`selfunet.data.labels`.

Both become one :class:`DatasetSpec`, and :func:`read_case` returns identical arrays for the same
data in either layout. Parsing never opens an image: missing files are reported by
``selfunet check``, not here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from selfunet.artifacts import read_user_text
from selfunet.data.grids import read_channel_files
from selfunet.data.io import ImageGeometry, file_ending, read_image, strip_ending
from selfunet.data.labels import LabelScheme, scheme_from_declaration
from selfunet.errors import SelfUNetError, clip, quote

Layout = Literal["msd", "nnunetv2"]


@dataclass(frozen=True)
class CaseSpec:
    """One case: its image file(s) and, for training cases, its label file."""

    case_id: str
    images: tuple[Path, ...]
    """MSD: one file (3D, or 4D with channels last on disk); nnU-Net v2: one file per channel."""
    label: Path | None = None


@dataclass(frozen=True)
class DatasetSpec:
    root: Path
    name: str
    layout: Layout
    channel_names: tuple[str, ...]
    """modality per channel, e.g. ``("CT",)`` or ``("FLAIR", "T1w", "t1gd", "T2w")``."""
    labels: dict[int, str]
    """label value -> name; 0 is the background."""
    file_ending: str
    training: tuple[CaseSpec, ...]
    test: tuple[CaseSpec, ...]
    label_scheme: LabelScheme = field(default_factory=LabelScheme)
    """regions and ignore label (default: plain classes, everything annotated)."""

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        """classes including background (label values must be 0..num_classes-1)."""
        return max(self.labels) + 1

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        """foreground label values (the ignore label is not one)."""
        return tuple(sorted(v for v in self.labels if v > 0 and v != self.label_scheme.ignore_label))

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "name": self.name,
            "layout": self.layout,
            "channel_names": list(self.channel_names),
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "file_ending": self.file_ending,
            "num_training": len(self.training),
            "num_test": len(self.test),
            "label_scheme": self.label_scheme.summary(),
        }


#: the largest dataset.json read (the biggest Decathlon one is ~100 kB; a million cases fit).
MAX_DATASET_JSON_BYTES = 64 * 1024 * 1024


def load_dataset(root: str | Path) -> DatasetSpec:
    """Parse ``root/dataset.json`` and list the cases of whichever layout it uses."""
    root = Path(root).resolve()
    descriptor = root / "dataset.json"
    if not root.is_dir():
        raise SelfUNetError(f"{root}: dataset folder not found.")
    if not descriptor.is_file():
        raise SelfUNetError(
            f"{descriptor} not found: a dataset folder needs a dataset.json (MSD or nnU-Net v2 layout)."
        )
    text = read_user_text(descriptor, "a dataset.json", MAX_DATASET_JSON_BYTES,
                          "save it as UTF-8 (JSON files are UTF-8).")
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = f"line {exc.lineno}, column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else (
            "nested too deeply")
        raise SelfUNetError(f"{descriptor}: not valid JSON ({detail}); fix the file.") from None
    if not isinstance(raw, dict):
        raise SelfUNetError(f"{descriptor}: expected a JSON object at the top level, got a {type(raw).__name__}; "
                            'write it as {"modality": ..., "labels": ..., "training": [...]} '
                            '(docs/reference/formats.md).')
    if "modality" in raw:
        return _load_msd(root, descriptor, raw)
    if "channel_names" in raw:
        return _load_nnunetv2(root, descriptor, raw)
    raise SelfUNetError(
        f"{descriptor}: neither an MSD dataset.json (needs 'modality') nor an nnU-Net v2 one "
        "(needs 'channel_names'); add the key that matches your layout."
    )


def _require(descriptor: Path, raw: dict, key: str, kind: type) -> object:
    if key not in raw:
        raise SelfUNetError(f"{descriptor}: missing key '{key}'; add it (dataset.json: docs/reference/formats.md).")
    if not isinstance(raw[key], kind):
        example = {"dict": "an object such as {\"0\": ...}", "list": "a list [...]", "str": "a string"}[kind.__name__]
        raise SelfUNetError(f"{descriptor}: '{key}' must be {example}, got a {type(raw[key]).__name__} "
                            f"({quote(raw[key], 80)}); fix the value.")
    return raw[key]


def _indexed_names(descriptor: Path, key: str, mapping: dict) -> tuple[str, ...]:
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except ValueError as exc:
        raise SelfUNetError(f"{descriptor}: the keys of '{key}' must be integers as strings, e.g. "
                            f'{{"0": "CT"}}; got {quote(list(mapping), 80)}.') from exc
    if [i for i, _ in items] != list(range(len(items))):
        raise SelfUNetError(f"{descriptor}: the keys of '{key}' must be 0, 1, 2, ... without gaps, got "
                            f"{clip(str([i for i, _ in items]), 80)}; renumber them.")
    return tuple(name for _, name in items)


def _check_labels(descriptor: Path, labels: dict[int, str]) -> dict[int, str]:
    if 0 not in labels:
        raise SelfUNetError(f"{descriptor}: 'labels' must declare the background as 0; add it "
                            '(MSD: "0": "background"; nnU-Net v2: "background": 0).')
    if sorted(labels) != list(range(len(labels))):
        raise SelfUNetError(
            f"{descriptor}: label values must be consecutive 0..N-1, got {clip(str(sorted(labels)), 80)}; "
            "renumber them."
        )
    return labels


def _resolve(root: Path, entry: object, where: str, escapes: list[str]) -> Path | None:
    """``entry`` (a path relative to the dataset folder) as an absolute path.

    An entry that is absolute or climbs out with ``..`` is collected in ``escapes`` (reported
    together by the caller): a dataset.json must not make selfunet read files outside its folder,
    which a container would not have mounted and which a shared dataset could use to pull in
    anyone's files. The check is on the written path, so a folder inside the dataset that is a
    symbolic link to another disk keeps working.
    """
    if not isinstance(entry, str) or not entry:
        escapes.append(f"{where}: {entry!r} is not a path string")
        return None
    path = Path(entry)
    normal = os.path.normpath(path)
    if path.is_absolute() or normal == ".." or normal.startswith("../"):
        escapes.append(f"{where}: '{entry}' points outside the dataset folder")
        return None
    return (root / path).resolve()


def _raise_escapes(descriptor: Path, root: Path, escapes: list[str]) -> None:
    if escapes:
        shown = "; ".join(escapes[:5]) + (f"; ... ({len(escapes)} in all)" if len(escapes) > 5 else "")
        raise SelfUNetError(
            f"{descriptor}: {shown}. Every path in dataset.json must name a file inside {root}, relative to it "
            "(e.g. ./imagesTr/case_001.nii.gz): copy or link the files into the dataset folder and fix the entries."
        )


def _load_msd(root: Path, descriptor: Path, raw: dict) -> DatasetSpec:
    channel_names = _indexed_names(descriptor, "modality", _require(descriptor, raw, "modality", dict))  # type: ignore[arg-type]
    raw_labels = _require(descriptor, raw, "labels", dict)
    try:
        labels = {int(k): str(v) for k, v in raw_labels.items()}  # type: ignore[union-attr]
    except ValueError as exc:
        raise SelfUNetError(
            f"{descriptor}: MSD 'labels' maps integer values (as strings) to names, e.g. "
            '{"0": "background", "1": "liver"}.'
        ) from exc
    labels = _check_labels(descriptor, labels)
    regions = None
    if "regions" in raw:
        raw_regions = _require(descriptor, raw, "regions", dict)
        regions = []
        for name, values in raw_regions.items():  # type: ignore[union-attr]
            if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise SelfUNetError(f"{descriptor}: region '{name}' must map to a list of integer label values.")
            regions.append((str(name), values))
    scheme = scheme_from_declaration(str(descriptor), labels, regions, _class_order(descriptor, raw))
    training, escapes = [], []
    for i, entry in enumerate(_require(descriptor, raw, "training", list)):  # type: ignore[arg-type]
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(
                entry.get("label"), str) or not entry["image"] or not entry["label"]:
            raise SelfUNetError(
                f"{descriptor}: training entry {i} ({quote(entry)}) must be an object with 'image' and 'label' "
                'paths, e.g. {"image": "./imagesTr/case_001.nii.gz", "label": "./labelsTr/case_001.nii.gz"}.'
            )
        case = f"training entry {i} (case '{_case_name(entry['image'])}')"
        image = _resolve(root, entry["image"], f"{case} 'image'", escapes)
        label = _resolve(root, entry["label"], f"{case} 'label'", escapes)
        if image is not None and label is not None:
            training.append(CaseSpec(strip_ending(image), (image,), label))
    test = []
    for i, entry in enumerate(raw.get("test", [])):
        if not isinstance(entry, str) or not entry:
            raise SelfUNetError(f"{descriptor}: test entry {i} ({quote(entry)}) must be a path string, e.g. "
                                '"./imagesTs/case_101.nii.gz".')
        image = _resolve(root, entry, f"test entry {i} (case '{_case_name(entry)}')", escapes)
        if image is not None:
            test.append(CaseSpec(strip_ending(image), (image,)))
    _raise_escapes(descriptor, root, escapes)
    first = training[0].images[0] if training else (test[0].images[0] if test else Path("x.nii.gz"))
    return DatasetSpec(
        root=root,
        name=str(raw.get("name", root.name)),
        layout="msd",
        channel_names=channel_names,
        labels=labels,
        file_ending=file_ending(first),
        training=tuple(training),
        test=tuple(test),
        label_scheme=scheme,
    )


def _case_name(entry: object) -> str:
    if not isinstance(entry, str) or not entry:
        return "?"
    try:
        return strip_ending(entry)
    except SelfUNetError:
        return Path(entry).name


def _load_nnunetv2(root: Path, descriptor: Path, raw: dict) -> DatasetSpec:
    channel_names = _indexed_names(descriptor, "channel_names", _require(descriptor, raw, "channel_names", dict))  # type: ignore[arg-type]
    labels, scheme = nnunetv2_labels(descriptor, raw)
    ending = str(_require(descriptor, raw, "file_ending", str))
    file_ending(f"x{ending}")
    num_channels = len(channel_names)

    def images_of(folder: Path, case_id: str) -> tuple[Path, ...]:
        return tuple(folder / f"{case_id}_{c:04d}{ending}" for c in range(num_channels))

    def ids_in(folder: Path, suffix: str) -> set[str]:
        if not folder.is_dir():
            return set()
        return {
            p.name[: -len(suffix)]
            for p in folder.iterdir()
            if p.name.endswith(suffix) and not p.name.startswith(".")
        }

    images_tr, labels_tr = root / "imagesTr", root / "labelsTr"
    train_ids = ids_in(labels_tr, ending) | {i for i in ids_in(images_tr, ending) if _is_channel_file(i)}
    train_ids = {_case_of(i) for i in train_ids}
    training = tuple(
        CaseSpec(cid, images_of(images_tr, cid), labels_tr / f"{cid}{ending}") for cid in sorted(train_ids)
    )
    test_ids = {_case_of(i) for i in ids_in(root / "imagesTs", ending) if _is_channel_file(i)}
    test = tuple(CaseSpec(cid, images_of(root / "imagesTs", cid)) for cid in sorted(test_ids))
    return DatasetSpec(
        root=root,
        name=str(raw.get("name", root.name)),
        layout="nnunetv2",
        channel_names=channel_names,
        labels=labels,
        file_ending=ending,
        training=training,
        test=test,
        label_scheme=scheme,
    )


def nnunetv2_labels(descriptor: Path, raw: dict) -> tuple[dict[int, str], LabelScheme]:
    """The label values (value -> name) and the label scheme of an nnU-Net v2 ``dataset.json``
    (``labels`` and ``regions_class_order``); also read by the nnU-Net model importer."""
    raw_labels = _require(descriptor, raw, "labels", dict)
    labels, regions = _labels_v2(descriptor, raw_labels)  # type: ignore[arg-type]
    labels = _check_labels(descriptor, labels)
    order = _class_order(descriptor, raw)
    scheme = scheme_from_declaration(str(descriptor), labels, regions, order)
    for (name, _), value in zip(regions or [], order or []):
        if labels[value] == f"label {value}":
            labels[value] = name
    return labels, scheme


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _labels_v2(descriptor: Path, raw_labels: dict) -> tuple[dict[int, str], list[tuple[str, list[int]]] | None]:
    """nnU-Net v2 ``labels``: name -> value, or name -> list of values (a region).

    With regions, the label values found in the files are the union of the regions' values; each
    value is named after the region that paints it (``regions_class_order``) where there is one.
    """
    labels: dict[int, str] = {}
    regions: list[tuple[str, list[int]]] = []
    any_region = any(isinstance(v, list) for v in raw_labels.values())
    for name, value in raw_labels.items():
        if isinstance(value, list) and len(value) == 1 and _is_int(value[0]) and name in ("background", "ignore"):
            value = value[0]
        if _is_int(value):
            if value == 0 or name == "ignore" or not any_region:
                labels[value] = str(name)
            else:
                regions.append((str(name), [value]))
        elif isinstance(value, list) and value and all(_is_int(v) for v in value):
            regions.append((str(name), list(value)))
        else:
            raise SelfUNetError(
                f"{descriptor}: label {quote(name)} maps to {quote(value)}; give one integer value, or a list of "
                "integer values for a region."
            )
    if not regions:
        return labels, None
    for _, values in regions:
        for v in values:
            labels.setdefault(v, f"label {v}")
    return labels, regions


def _class_order(descriptor: Path, raw: dict) -> list[int] | None:
    order = raw.get("regions_class_order")
    if order is None:
        return None
    if not isinstance(order, list) or not all(_is_int(v) for v in order):
        raise SelfUNetError(f"{descriptor}: 'regions_class_order' must be a list of integer label values.")
    return list(order)


def _is_channel_file(stem: str) -> bool:
    return len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit()


def _case_of(stem: str) -> str:
    """``case_0000`` -> ``case``; a label stem (no channel suffix) stays as it is."""
    return stem[:-5] if _is_channel_file(stem) else stem


def read_case_image(dataset: DatasetSpec, case: CaseSpec) -> tuple[np.ndarray, ImageGeometry]:
    """All channels of a case as float32 ``(C, z, y, x)`` plus the geometry of the first channel.

    Headers first: each is checked against the image bounds and every channel against channel 0's
    grid before a voxel is read (:func:`selfunet.data.grids.read_channel_files`)."""
    return read_channel_files(case.case_id, case.images, dataset.num_channels, "dataset.json declares")


def read_case_label(case: CaseSpec) -> tuple[np.ndarray, ImageGeometry]:
    """The label map as ``(z, y, x)`` (dtype as stored; ``selfunet check`` verifies integrality)."""
    if case.label is None:
        raise SelfUNetError(f"case '{case.case_id}' has no label file (it is a test case).")
    array, geometry = read_image(case.label)
    if array.shape[0] != 1:
        raise SelfUNetError(f"{case.label}: a label map must have one channel, found {array.shape[0]}.")
    return array[0], geometry
