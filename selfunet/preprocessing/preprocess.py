"""Preprocessing (docs/explanation/design.md#preprocessing): crop -> normalize -> transpose -> resample -> save.

Every training case of the dataset becomes, per distinct preprocessing (``data_identifier``),
the files described in docs/reference/formats.md: the image as a float32 ``.npy`` (memory-mapped by the
patch sampler), the label map as int8 ``_seg.npy`` (-1 outside the non-zero mask), sampled
foreground voxel coordinates per class (``_fg.npz``) and, written last, a
:class:`PreprocessedCase` JSON whose existence marks the case complete. Every file is written
through a temporary file and a rename, so a killed run leaves only ``.*.tmp`` files, which are
never trusted and are swept on the next run.

Test images go through :func:`preprocess_image_for_inference`, the same steps in memory.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from selfunet.artifacts import Artifact, atomic_save_npy, atomic_save_npz, atomic_write_json, remove_stale_temps
from selfunet.data.cropping import bbox_shape, bounding_box, crop_to_bbox, nonzero_mask
from selfunet.data.dataset import CaseSpec, DatasetSpec, load_dataset, read_case_image, read_case_label
from selfunet.data.io import ImageGeometry
from selfunet.errors import SelfUNetError
from selfunet.planning.fingerprint_types import Fingerprint
from selfunet.planning.plan_types import Configuration, Plan
from selfunet.preprocessing.normalize import normalize_image
from selfunet.preprocessing.resample import compute_new_shape, resample_image, resample_segmentation
from selfunet.workdir import WorkDir

log = logging.getLogger(__name__)

#: docs/explanation/design.md#sampling: per class, keep max(min(10000, n), ceil(1% of n)) voxel coordinates.
FG_SAMPLES_MIN = 10_000
FG_SAMPLES_FRACTION = 0.01
#: label value of voxels outside the non-zero mask (training counts it as background, as the reference).
OUTSIDE_LABEL = -1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GeometryRecord(_Frozen):
    """:class:`~selfunet.data.io.ImageGeometry` as JSON (same keys as ``ImageGeometry.to_dict()``)."""

    shape: list[int]
    spacing: list[float]
    origin: list[float]
    direction: list[float]
    ndim_on_disk: int = 3

    @classmethod
    def of(cls, geometry: ImageGeometry) -> GeometryRecord:
        return cls.model_validate(geometry.to_dict())

    def to_geometry(self) -> ImageGeometry:
        return ImageGeometry.from_dict(self.model_dump())


class PreprocessedCase(Artifact):
    """Everything needed to map a preprocessed case (or a prediction on it) back to the original."""

    SCHEMA_VERSION: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "`selfunet preprocess WORK`"

    case_id: str
    geometry: GeometryRecord
    """the original image header (array order shape/spacing, SimpleITK origin/direction)."""
    shape_before_crop: list[int]
    crop_bbox: list[list[int]]
    """per array axis ``[start, stop)`` of the non-zero bounding box."""
    shape_after_crop: list[int]
    spacing: list[float]
    """original spacing, array order."""
    target_spacing: list[float]
    """spacing after resampling, plan order (2D: axis 0 keeps the case's own spacing)."""
    shape_after_resampling: list[int]
    """plan order."""
    classes_present: list[int]
    """foreground label values present after resampling (empty for test images)."""
    transpose_forward: list[int]
    data_identifier: str = ""
    plan_signature: str = ""
    """hash of the plan fields that shape this preprocessing; a mismatch makes a rerun redo the case."""

    @property
    def image_geometry(self) -> ImageGeometry:
        return self.geometry.to_geometry()


def plan_signature(plan: Plan, configuration: Configuration) -> str:
    """Hash of everything that changes the preprocessed arrays of one data identifier."""
    relevant = {
        "transpose_forward": plan.transpose_forward,
        "dimension": configuration.dimension,
        "spacing": configuration.spacing if configuration.dimension == 3 else configuration.spacing[1:],
        "normalization": [n.model_dump() for n in configuration.normalization],
        "resampling": configuration.resampling.model_dump(),
        "fg_samples": [FG_SAMPLES_MIN, FG_SAMPLES_FRACTION],
    }
    return hashlib.sha256(repr(relevant).encode()).hexdigest()[:16]


def target_spacing_for(
    configuration: Configuration, spacing_plan_order: Sequence[float]
) -> list[float]:
    """The configuration's spacing; 2D keeps each case's own out-of-plane spacing (no resampling)."""
    target = [float(s) for s in configuration.spacing]
    if configuration.dimension == 2:
        target[0] = float(spacing_plan_order[0])
    return target


def seg_dtype(num_classes: int) -> type[np.signedinteger]:
    """int8 (the documented format) unless there are more than 127 classes."""
    return np.int8 if num_classes <= 127 else np.int16


def preprocess_case(
    image: np.ndarray,
    label: np.ndarray | None,
    geometry: ImageGeometry,
    plan: Plan,
    configuration: Configuration,
    case_id: str = "",
) -> tuple[np.ndarray, np.ndarray | None, PreprocessedCase]:
    """One case in memory: ``(data (C, *plan-order spatial), seg (1, ...) or None, properties)``.

    Order (docs/explanation/design.md#preprocessing): crop to the non-zero box, normalize (stats of acquired voxels),
    transpose to plan order, resample image (spline) and labels (one-hot linear).
    """
    if image.ndim != 4:
        raise SelfUNetError(f"case '{case_id}': expected an image (C, z, y, x), got shape {image.shape}.")
    if label is not None and label.shape != image.shape[1:]:
        raise SelfUNetError(
            f"case '{case_id}': label shape {label.shape} differs from the image's {image.shape[1:]}; "
            "run `selfunet check` on the dataset."
        )
    mask = nonzero_mask(image)
    bbox = bounding_box(mask)
    cropped = crop_to_bbox(image, bbox)
    mask = crop_to_bbox(mask, bbox)
    data = normalize_image(cropped, configuration.normalization, mask)
    del cropped

    seg = None
    if label is not None:
        seg = crop_to_bbox(label, bbox).astype(seg_dtype(plan.num_classes))
        # background outside the body is "unknown"; a labelled voxel is never thrown away
        seg[(seg == 0) & ~mask] = OUTSIDE_LABEL
    del mask

    forward = list(plan.transpose_forward)
    data = np.ascontiguousarray(data.transpose([0, *[a + 1 for a in forward]]))
    spacing = [float(s) for s in geometry.spacing]
    spacing_t = [spacing[a] for a in forward]
    target = target_spacing_for(configuration, spacing_t)
    new_shape = compute_new_shape(data.shape[1:], spacing_t, target, what=f"case '{case_id}'")
    data = resample_image(data, spacing_t, new_shape=new_shape, settings=configuration.resampling)
    classes: list[int] = []
    if seg is not None:
        seg = np.ascontiguousarray(seg.transpose(forward))
        seg = resample_segmentation(seg, spacing_t, new_shape=new_shape, settings=configuration.resampling)
        classes = [int(v) for v in np.unique(seg) if v > 0]
        seg = seg[None]
    properties = PreprocessedCase(
        case_id=case_id,
        geometry=GeometryRecord.of(geometry),
        shape_before_crop=list(geometry.shape),
        crop_bbox=[list(b) for b in bbox],
        shape_after_crop=bbox_shape(bbox),
        spacing=spacing,
        target_spacing=target,
        shape_after_resampling=[int(n) for n in new_shape],
        classes_present=classes,
        transpose_forward=forward,
        data_identifier=configuration.data_identifier,
        plan_signature=plan_signature(plan, configuration),
    )
    return data, seg, properties


def preprocess_image_for_inference(
    image: np.ndarray, geometry: ImageGeometry, plan: Plan, configuration: str | Configuration, case_id: str = ""
) -> tuple[np.ndarray, PreprocessedCase]:
    """A test image preprocessed in memory exactly like the training data (no label)."""
    config = _configuration(plan, configuration) if isinstance(configuration, str) else configuration
    data, _, properties = preprocess_case(image, None, geometry, plan, config, case_id)
    return data, properties


def sample_foreground(seg: np.ndarray, case_id: str) -> dict[str, np.ndarray]:
    """Per foreground class, ``(N, 3)`` int32 voxel coordinates drawn without replacement.

    N = max(min(10000, count), ceil(1% of count)); the generator is seeded by the case id, so the
    same case always gets the same samples whatever process or order it ran in.
    """
    spatial = seg[0] if seg.ndim == 4 else seg
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    flat = spatial.ravel()
    out: dict[str, np.ndarray] = {}
    for value in np.unique(flat):
        if value <= 0:
            continue
        where = np.flatnonzero(flat == value)
        count = len(where)
        n = max(min(FG_SAMPLES_MIN, count), math.ceil(FG_SAMPLES_FRACTION * count))
        picked = np.sort(rng.choice(where, size=n, replace=False)) if n < count else where
        coords = np.stack(np.unravel_index(picked, spatial.shape), axis=1).astype(np.int32)
        out[f"class_{int(value)}"] = coords
    return out


# ------------------------------------------------------------------------------ on disk ------


def case_files(folder: Path, case_id: str) -> dict[str, Path]:
    return {
        "data": folder / f"{case_id}.npy",
        "seg": folder / f"{case_id}_seg.npy",
        "fg": folder / f"{case_id}_fg.npz",
        "properties": folder / f"{case_id}.json",
    }


def is_case_complete(folder: Path, case_id: str, signature: str) -> bool:
    """True when the marker JSON exists, validates, matches the plan, and the arrays exist."""
    files = case_files(folder, case_id)
    if not files["properties"].is_file():
        return False
    try:
        properties = PreprocessedCase.load(files["properties"])
    except SelfUNetError:
        return False
    if properties.plan_signature != signature:
        return False
    return all(files[k].is_file() for k in ("data", "seg", "fg"))


def _write_case(folder: Path, case_id: str, data: np.ndarray, seg: np.ndarray, props: PreprocessedCase) -> None:
    files = case_files(folder, case_id)
    # a previous, outdated marker goes first: the arrays below must never pair with it
    files["properties"].unlink(missing_ok=True)
    atomic_save_npy(files["data"], data.astype(np.float32, copy=False))
    atomic_save_npy(files["seg"], seg)
    atomic_save_npz(files["fg"], **sample_foreground(seg, case_id))
    props.save(files["properties"])


def _job(args: tuple) -> str:
    dataset, case, plan, configuration, folder = args
    try:
        image, geometry = read_case_image(dataset, case)
        label, _ = read_case_label(case)
        data, seg, props = preprocess_case(image, label, geometry, plan, configuration, case.case_id)
        assert seg is not None  # training cases always have a label
        _write_case(folder, case.case_id, data, seg, props)
    except SelfUNetError:
        raise
    except Exception as exc:  # name the case and its files whatever went wrong
        files = ", ".join(str(p) for p in (*case.images, case.label) if p is not None)
        raise SelfUNetError(f"case '{case.case_id}' ({files}): preprocessing failed: {exc!r}") from exc
    return case.case_id


def _run(jobs: list[tuple], processes: int) -> Iterator[str]:
    if processes <= 1 or len(jobs) <= 1:
        yield from map(_job, jobs)
        return
    # spawn, not fork: the parent may hold torch/BLAS threads that a fork would copy locked.
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(processes, len(jobs)), maxtasksperchild=None) as pool:
        yield from pool.imap_unordered(_job, jobs)


def _configuration(plan: Plan, name: str) -> Configuration:
    if name not in plan.configurations:
        raise SelfUNetError(
            f"configuration '{name}' is not in the plan; choose one of {sorted(plan.configurations)}."
        )
    return plan.configurations[name]


def preprocess_dataset(
    dataset: DatasetSpec,
    plan: Plan,
    configuration: Configuration,
    folder: Path,
    processes: int = 2,
    console: Console | None = None,
    cases: Sequence[CaseSpec] | None = None,
) -> list[str]:
    """Preprocess the training cases into ``folder``; returns the ids that were (re)done."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)  # leftovers of a killed run: never trusted (a live writer's are kept)
    signature = plan_signature(plan, configuration)
    cases = list(dataset.training if cases is None else cases)
    todo = [c for c in cases if not is_case_complete(folder, c.case_id, signature)]
    if len(todo) < len(cases):
        log.info("%s: %d of %d cases already preprocessed", folder.name, len(cases) - len(todo), len(cases))
    jobs = [(dataset, case, plan, configuration, folder) for case in todo]
    done: list[str] = []
    with Progress(
        TextColumn(f"preprocess {configuration.data_identifier}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("cases", total=len(jobs))
        for case_id in _run(jobs, processes):
            done.append(case_id)
            progress.advance(task)
    atomic_write_json(
        folder / "dataset_preprocessed.json",
        {
            "data_identifier": configuration.data_identifier,
            "configuration": configuration.name,
            "plan_signature": signature,
            "cases": sorted(c.case_id for c in cases),
        },
    )
    return sorted(done)


def run_preprocess(
    work: Path, configurations: list[str] | None = None, processes: int = 2, console: Console | None = None
) -> dict[str, list[str]]:
    """``selfunet preprocess``: every (or the named) configuration's data, once per data identifier.

    Returns data identifier -> case ids processed in this run (empty when everything was done).
    """
    workdir = WorkDir(Path(work))
    plan = Plan.load(workdir.plan)
    fingerprint = Fingerprint.load(workdir.fingerprint)
    dataset = load_dataset(fingerprint.dataset.root)
    names = list(plan.configurations) if not configurations else list(configurations)
    by_identifier: dict[str, Configuration] = {}
    for name in names:
        config = _configuration(plan, name)
        by_identifier.setdefault(config.data_identifier, config)
    result = {}
    for identifier, config in by_identifier.items():
        result[identifier] = preprocess_dataset(
            dataset, plan, config, workdir.preprocessed(identifier), processes=processes, console=console
        )
        log.info("%s: %d case(s) preprocessed", identifier, len(result[identifier]))
    return result
