"""Read an nnU-Net v2 ``dataset_fingerprint.json`` (+ its ``dataset.json``) as our Fingerprint.

Why: users who already ran the reference fingerprint extraction can plan without recomputing it,
the planner's parity with the reference is tested by feeding both the same fingerprint, and an
imported nnU-Net model (:mod:`selfunet.interop`) carries its dataset facts this way. Only the JSON
files are read; nnunetv2 is never imported. Labels are read as the dataset loader reads an nnU-Net
v2 ``dataset.json`` (regions with ``regions_class_order``, the ``ignore`` label).

The reference fingerprint lacks what planning does not need: case ids (we number the cases),
shapes before cropping and crop boxes (taken as the cropped shape, the full box), label voxel
counts (empty) and the number of foreground samples (0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfunet.data.dataset import nnunetv2_labels
from selfunet.data.labels import LabelScheme
from selfunet.errors import SelfUNetError, clip
from selfunet.planning.fingerprint_types import CaseFingerprint, ChannelIntensity, DatasetSummary, Fingerprint

_INTENSITY_KEYS = ("mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SelfUNetError(f"{path} does not exist: give the path of the nnU-Net v2 {what}.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, or bytes that are not UTF-8
        raise SelfUNetError(f"{path} is not readable JSON ({clip(str(exc))}); give the nnU-Net v2 {what}.") from None
    if not isinstance(raw, dict):
        raise SelfUNetError(f"{path}: expected a JSON object (the nnU-Net v2 {what}).")
    return raw


def _require(raw: dict[str, Any], key: str, source: Path) -> Any:
    if key not in raw:
        raise SelfUNetError(f"{source}: missing key '{key}'; is this an nnU-Net v2 file?")
    return raw[key]


def _channel_names(dataset: dict[str, Any], source: Path) -> list[str]:
    names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(names, dict) or not names:
        raise SelfUNetError(f"{source}: needs 'channel_names' (or MSD 'modality') like {{\"0\": \"CT\"}}.")
    try:
        ordered = sorted(names.items(), key=lambda item: int(item[0]))
    except ValueError as exc:
        raise SelfUNetError(f"{source}: channel keys must be integers ('0', '1', ...), got {list(names)}.") from exc
    return [str(name) for _, name in ordered]


def _labels(dataset: dict[str, Any], source: Path) -> dict[str, str]:
    """nnU-Net v2 maps name -> value (MSD maps value -> name); we store value -> name."""
    raw = _require(dataset, "labels", source)
    if not isinstance(raw, dict) or not raw:
        raise SelfUNetError(f"{source}: 'labels' must be a non-empty object.")
    labels: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool):
            labels[str(value)] = str(key)
        elif isinstance(value, str) and str(key).lstrip("-").isdigit():
            labels[str(int(key))] = value
        else:
            raise SelfUNetError(
                f"{source}: label {key!r}: {value!r} is not a single integer value; region-based labels "
                "are not supported."
            )
    return dict(sorted(labels.items(), key=lambda item: int(item[0])))


def label_declaration(dataset: dict[str, Any], source: Path) -> tuple[dict[str, str], LabelScheme]:
    """Labels (value as a string -> name) and label scheme (regions, ignore label) of a dataset.json:
    nnU-Net v2's form (name -> value, or name -> list of values for a region) or the MSD form."""
    raw = _require(dataset, "labels", source)
    if isinstance(raw, dict) and raw and all(
            isinstance(v, (int, list)) and not isinstance(v, bool) for v in raw.values()):
        labels, scheme = nnunetv2_labels(source, dataset)
        return {str(k): v for k, v in sorted(labels.items())}, scheme
    return _labels(dataset, source), LabelScheme()


def fingerprint_from_nnunet(fingerprint_json: Path, dataset_json: Path) -> Fingerprint:
    """Convert the reference's fingerprint + dataset description into a :class:`Fingerprint`."""
    fingerprint_json, dataset_json = Path(fingerprint_json), Path(dataset_json)
    raw = _read_json(fingerprint_json, "dataset_fingerprint.json")
    dataset = _read_json(dataset_json, "dataset.json")
    spacings = _require(raw, "spacings", fingerprint_json)
    shapes = _require(raw, "shapes_after_crop", fingerprint_json)
    if not isinstance(spacings, list) or not isinstance(shapes, list) or len(spacings) != len(shapes):
        raise SelfUNetError(
            f"{fingerprint_json}: 'spacings' and 'shapes_after_crop' must be lists of equal length "
            f"(one entry per training case)."
        )
    if not spacings:
        raise SelfUNetError(f"{fingerprint_json}: no cases ('spacings' is empty).")
    channel_names = _channel_names(dataset, dataset_json)
    labels, scheme = label_declaration(dataset, dataset_json)
    intensity_raw = _require(raw, "foreground_intensity_properties_per_channel", fingerprint_json)
    intensity = []
    for index, name in enumerate(channel_names):
        props = intensity_raw.get(str(index)) if isinstance(intensity_raw, dict) else None
        if not isinstance(props, dict) or any(k not in props for k in _INTENSITY_KEYS):
            raise SelfUNetError(
                f"{fingerprint_json}: foreground_intensity_properties_per_channel['{index}'] needs the keys "
                f"{', '.join(_INTENSITY_KEYS)}."
            )
        intensity.append(
            ChannelIntensity(
                channel=index,
                modality=name,
                mean=float(props["mean"]),
                std=float(props["std"]),
                median=float(props["median"]),
                min=float(props["min"]),
                max=float(props["max"]),
                percentile_00_5=float(props["percentile_00_5"]),
                percentile_99_5=float(props["percentile_99_5"]),
                num_samples=0,
            )
        )
    cases = []
    for index, (spacing, shape) in enumerate(zip(spacings, shapes)):
        if len(spacing) != len(shape):
            raise SelfUNetError(
                f"{fingerprint_json}: case {index} has spacing {spacing} but shape {shape} (different lengths)."
            )
        shape = [int(s) for s in shape]
        cases.append(
            CaseFingerprint(
                case_id=f"case_{index:04d}",
                shape_before_crop=shape,
                shape_after_crop=shape,
                crop_bbox=[[0, s] for s in shape],
                spacing=[float(s) for s in spacing],
                label_voxel_counts={},
            )
        )
    summary = DatasetSummary(
        root=str(dataset_json.parent),
        name=str(dataset.get("name", dataset_json.parent.name)),
        layout="nnunetv2",
        channel_names=channel_names,
        labels=labels,
        label_scheme=scheme,
        file_ending=str(dataset.get("file_ending", ".nii.gz")),
        num_training=int(dataset.get("numTraining", len(cases))),
    )
    return Fingerprint(
        dataset=summary,
        cases=cases,
        intensity=intensity,
        median_relative_size_after_crop=float(_require(raw, "median_relative_size_after_cropping", fingerprint_json)),
        max_foreground_samples=0,
        seed=0,
    )
