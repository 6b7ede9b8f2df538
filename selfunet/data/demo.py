"""A small deterministic synthetic task in the Decathlon (MSD) layout.

The demo exists so that every stage (fingerprint, plan, preprocess, train, predict) can run end
to end on a 2-core CPU in minutes, on data that has the traits that make real data hard and that
the method's rules react to:

* anisotropic voxels (~3.3 mm between slices, ~0.8 mm in-plane), varying a little per case, so the
  planner's anisotropy rules and the out-of-plane resampling are exercised;
* case shapes that differ, and a zero background border around the body, so cropping matters;
* two MR-like channels with different contrasts, stored as ONE 4D NIfTI per case (as MSD does);
* an organ (a smooth, randomly deformed ellipsoid) and a much smaller lesion inside it, so class
  imbalance and foreground oversampling matter;
* a smooth multiplicative bias field and Rician noise, as in MR magnitude images;
* a non-trivial origin and direction, so writing results back with the right header is tested.

Every case is drawn from its own random generator seeded by ``(seed, case number)``: the same call
writes the same arrays, and ``demo_003`` does not change when more cases are requested.

Two variants exercise the label forms beyond plain classes (:mod:`selfunet.data.labels`):

* ``regions`` (BraTS-like, nnU-Net v2 layout, one file per channel): the organ holds a tumour
  *core* around the lesion, so labels 1 (organ rim, "oedema"), 2 (core) and 3 (lesion,
  "enhancing") form three nested regions, declared as nnU-Net v2 does: ``whole`` [1, 2, 3],
  ``core`` [2, 3], ``enhancing`` [3], ``regions_class_order`` [1, 2, 3].
* ``sparse`` (MSD layout): the default task, but only a few axial slices per case are
  annotated; every other voxel carries the label ``ignore`` (3). The dense training labels are
  written beside it (``labelsTr_dense/``; the test labels are in ``labelsTs/`` as for every
  variant) so a test can measure what was learned.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from selfunet.artifacts import atomic_write_json
from selfunet.data.dataset import DatasetSpec, load_dataset
from selfunet.data.io import save_image
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

#: bump when the generator changes, so an old demo folder is rewritten instead of trusted.
DEMO_VERSION = 1
#: written first (``complete: false``) and last (``complete: true``): a killed run is never trusted.
MARKER = ".selfunet_demo.json"
MODALITIES = {"0": "MR-T1", "1": "MR-T2"}
LABELS = {"0": "background", "1": "organ", "2": "lesion"}
#: mean intensity of (background tissue, organ, lesion) per channel: the lesion is dark in T1 and
#: bright in T2, the organ brighter than the surrounding tissue in T1 only.
TISSUE_MEANS = ((100.0, 160.0, 70.0), (80.0, 85.0, 210.0))
#: the regions variant: (tissue, organ rim, core, enhancing lesion); the core is mid-grey in both.
TISSUE_MEANS_REGIONS = ((100.0, 160.0, 125.0, 70.0), (80.0, 85.0, 150.0, 210.0))
NOISE_SIGMA = 7.0
#: the test cases' reference labels (not listed in dataset.json, as in a challenge: the held-out
#: answers a task descriptor's ``test_labels:`` points at for ``harness score``).
TEST_LABELS = "labelsTs"
VARIANTS = ("default", "regions", "sparse")
#: nnU-Net v2 form: a region is a list of label values; painted in regions_class_order.
REGION_LABELS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
REGIONS_CLASS_ORDER = [1, 2, 3]
SPARSE_LABELS = {"0": "background", "1": "organ", "2": "lesion", "3": "ignore"}
#: axial slices annotated per case in the sparse variant (one of them through the lesion).
SPARSE_SLICES = 4


def make_demo_dataset(out: Path, num_training: int = 12, num_test: int = 3, seed: int = 0,
                      variant: str = "default") -> DatasetSpec:
    """Write the demo task into ``out`` (MSD layout; ``regions``: nnU-Net v2 layout) and return it parsed.

    Returns at once when ``out`` already holds a complete demo made with the same parameters.
    Refuses to write into a folder that holds some other dataset (a ``dataset.json`` without
    the demo marker), so a user's data is never overwritten.
    """
    if num_training < 1 or num_test < 0:
        raise SelfUNetError(
            f"demo data: need at least 1 training case and no negative test count, got "
            f"num_training={num_training}, num_test={num_test}."
        )
    if variant not in VARIANTS:
        raise SelfUNetError(f"demo data: unknown variant '{variant}'; choose one of {', '.join(VARIANTS)}.")
    out = Path(out)
    params = {"version": DEMO_VERSION, "num_training": num_training, "num_test": num_test, "seed": seed}
    if variant != "default":  # the default's marker stays as it was, so existing demo folders stay valid
        params["variant"] = variant
    marker = out / MARKER
    descriptor = out / "dataset.json"
    previous = _read_marker(marker)
    if previous is None and descriptor.exists():
        raise SelfUNetError(
            f"{out} already holds a dataset.json that is not a selfunet demo; choose an empty folder."
        )
    if previous == {"params": params, "complete": True} and descriptor.is_file():
        spec = load_dataset(out)
        test_labels = [out / TEST_LABELS / f"{c.case_id}.nii.gz" for c in spec.test]
        if all(p.is_file() for c in spec.training + spec.test for p in (*c.images, c.label) if p) and all(
                p.is_file() for p in test_labels):
            log.info("demo dataset already complete in %s", out)
            return spec

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"params": params, "complete": False})
    descriptor.unlink(missing_ok=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs", TEST_LABELS, "labelsTr_dense"):
        if sub == "labelsTr_dense" and variant != "sparse":
            continue
        (out / sub).mkdir(exist_ok=True)
        for stale in (out / sub).glob("demo_*.nii.gz"):
            stale.unlink()
    if variant == "regions":
        return _write_regions_variant(out, marker, params, seed, train_numbers_of(num_training),
                                      test_numbers_of(num_training, num_test))

    train_numbers = train_numbers_of(num_training)
    test_numbers = test_numbers_of(num_training, num_test)
    sparse = variant == "sparse"
    training = []
    for number in train_numbers:
        case_id = f"demo_{number:03d}"
        image, label, geometry = _make_case(seed, number)
        _write(out / "imagesTr" / f"{case_id}.nii.gz", image, geometry)
        if sparse:
            _write(out / "labelsTr_dense" / f"{case_id}.nii.gz", label[None], geometry)
            label = _sparsify(label, seed, number)
        _write(out / "labelsTr" / f"{case_id}.nii.gz", label[None], geometry)
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    test = []
    for number in test_numbers:
        case_id = f"demo_{number:03d}"
        image, label, geometry = _make_case(seed, number)
        _write(out / "imagesTs" / f"{case_id}.nii.gz", image, geometry)
        _write(out / TEST_LABELS / f"{case_id}.nii.gz", label[None], geometry)
        test.append(f"./imagesTs/{case_id}.nii.gz")

    atomic_write_json(
        descriptor,
        {
            "name": "SelfUNetDemoSparse" if sparse else "SelfUNetDemo",
            "description": "Synthetic two-channel MR-like task: organ and lesion (selfunet demo-data)"
            + ("; a few annotated slices per case, the rest 'ignore'" if sparse else ""),
            "reference": "generated by selfunet.data.demo",
            "licence": "CC0",
            "release": str(DEMO_VERSION),
            "tensorImageSize": "4D",
            "modality": MODALITIES,
            "labels": SPARSE_LABELS if sparse else LABELS,
            "numTraining": num_training,
            "numTest": num_test,
            "training": training,
            "test": test,
        },
    )
    atomic_write_json(marker, {"params": params, "complete": True})
    log.info("wrote demo dataset (%d training, %d test cases) to %s", num_training, num_test, out)
    return load_dataset(out)


def train_numbers_of(num_training: int) -> list[int]:
    return list(range(num_training))


def test_numbers_of(num_training: int, num_test: int) -> list[int]:
    first_test = max(100, num_training)
    return list(range(first_test, first_test + num_test))


def _sparsify(label: np.ndarray, seed: int, number: int) -> np.ndarray:
    """Keep :data:`SPARSE_SLICES` axial slices (one through the lesion), mark the rest ``ignore``."""
    rng = np.random.default_rng([seed, number, 7])
    lesion_slices = np.flatnonzero((label == 2).any(axis=(1, 2)))
    chosen = {int(lesion_slices[len(lesion_slices) // 2])} if len(lesion_slices) else set()
    others = [z for z in range(label.shape[0]) if z not in chosen]
    chosen |= {int(z) for z in rng.choice(others, size=min(SPARSE_SLICES - len(chosen), len(others)), replace=False)}
    sparse = np.full_like(label, 3)
    keep = sorted(chosen)
    sparse[keep] = label[keep]
    return sparse


def _write_regions_variant(out: Path, marker: Path, params: dict, seed: int, train_numbers: list[int],
                           test_numbers: list[int]) -> DatasetSpec:
    """The BraTS-like variant in the nnU-Net v2 layout (one file per channel)."""
    for number in train_numbers + test_numbers:
        case_id = f"demo_{number:03d}"
        image, label, geometry = _make_case(seed, number, regions=True)
        folder = "imagesTr" if number in train_numbers else "imagesTs"
        for channel in range(image.shape[0]):
            _write(out / folder / f"{case_id}_{channel:04d}.nii.gz", image[channel:channel + 1], geometry)
        _write(out / ("labelsTr" if number in train_numbers else TEST_LABELS) / f"{case_id}.nii.gz", label[None],
               geometry)
    atomic_write_json(
        out / "dataset.json",
        {
            "name": "SelfUNetDemoRegions",
            "description": "Synthetic BraTS-like task: nested regions whole/core/enhancing (selfunet demo-data)",
            "channel_names": {"0": "MR-T1", "1": "MR-T2"},
            "labels": REGION_LABELS,
            "regions_class_order": REGIONS_CLASS_ORDER,
            "numTraining": len(train_numbers),
            "file_ending": ".nii.gz",
        },
    )
    atomic_write_json(marker, {"params": params, "complete": True})
    log.info("wrote regions demo dataset (%d training, %d test cases) to %s", len(train_numbers),
             len(test_numbers), out)
    return load_dataset(out)


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _make_case(seed: int, number: int, regions: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """One case: image ``(2, z, y, x)`` int16, label ``(z, y, x)`` uint8 and its header.

    ``regions``: a core (label 2) around the lesion (then label 3) inside the organ (label 1); drawn
    after everything else, so the shared geometry equals the default variant's."""
    rng = np.random.default_rng([seed, number])
    shape = (int(rng.integers(20, 29)), int(rng.integers(56, 73)), int(rng.integers(56, 73)))
    inplane = float(np.float32(rng.uniform(0.75, 0.85)))
    spacing = (float(np.float32(rng.uniform(3.0, 3.6))), inplane, inplane)  # array order (z, y, x)
    # physical coordinates (mm) of every voxel centre relative to the volume centre
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)

    def smooth_field(sigma_mm: float, amplitude: float) -> np.ndarray:
        """Zero-mean smooth random field, so shapes and the bias field vary per case."""
        field = ndimage.gaussian_filter(
            rng.standard_normal(shape), [sigma_mm / s for s in spacing], mode="reflect"
        )
        return amplitude * field / (np.abs(field).max() + 1e-12)

    # body: an elliptic cylinder in-plane, shorter than the volume in z, leaving a zero border
    body_radii = (shape[0] * spacing[0] * rng.uniform(0.36, 0.42),
                  shape[1] * spacing[1] * rng.uniform(0.34, 0.42),
                  shape[2] * spacing[2] * rng.uniform(0.34, 0.42))
    body_centre = [rng.uniform(-2.0, 2.0) * s for s in spacing]
    body_dist = _ellipsoid_distance(grids[1:], body_centre[1:], body_radii[1:])
    body_z = np.abs(grids[0] - body_centre[0]) / body_radii[0]
    body = (body_dist + smooth_field(12.0, 0.08) < 1.0) & (body_z < 1.0)

    # organ: a deformed ellipsoid well inside the body
    organ_radii = (rng.uniform(0.45, 0.6) * body_radii[0],
                   rng.uniform(0.5, 0.6) * body_radii[1],
                   rng.uniform(0.5, 0.6) * body_radii[2])
    organ_centre = [c + rng.uniform(-0.15, 0.15) * r for c, r in zip(body_centre, body_radii, strict=True)]
    organ_dist = _ellipsoid_distance(grids, organ_centre, organ_radii)
    organ_dist = organ_dist + smooth_field(6.0, 0.2)
    organ = (organ_dist < 1.0) & body

    # lesion: a small blob (radius 2.5-4 mm in-plane, at least one slice thick) deep in the organ
    candidates = np.argwhere(organ_dist < 0.45)
    if len(candidates) == 0:
        candidates = np.argwhere(organ)
    centre_index = candidates[rng.integers(len(candidates))]
    lesion_centre = [g.ravel()[i] for g, i in zip(grids, centre_index, strict=True)]
    lesion_r = rng.uniform(2.5, 4.0)
    lesion_radii = (max(lesion_r, 0.6 * spacing[0]), lesion_r, lesion_r)
    lesion_dist = _ellipsoid_distance(grids, lesion_centre, lesion_radii)
    lesion = (lesion_dist + smooth_field(2.0, 0.15) < 1.0) & organ
    lesion[tuple(centre_index)] = True

    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion] = 2

    bias = np.exp(smooth_field(40.0, 0.25))  # up to ~+-25 %, smooth over the whole volume
    means_per_channel = TISSUE_MEANS
    if regions:
        # bigger than the default lesion: a small region learns slowly with sigmoid outputs + BCE
        enhancing = (_ellipsoid_distance(grids, lesion_centre, tuple(1.5 * r for r in lesion_radii)) < 1.0) & organ
        core = (_ellipsoid_distance(grids, lesion_centre, tuple(2.6 * r for r in lesion_radii)) < 1.0) & organ
        label[core] = 2
        label[enhancing | lesion] = 3
        means_per_channel = TISSUE_MEANS_REGIONS
    image = np.zeros((2, *shape), dtype=np.int16)
    for channel, means in enumerate(means_per_channel):
        clean = np.choose(label, means) * (1.0 + smooth_field(3.0, 0.06))  # tissue texture
        clean = clean * bias
        noisy = np.sqrt(
            (clean + rng.normal(0.0, NOISE_SIGMA, shape)) ** 2 + rng.normal(0.0, NOISE_SIGMA, shape) ** 2
        )
        # MR magnitude images are stored as integers; the body must stay non-zero in every channel
        image[channel] = np.where(body, np.clip(np.rint(noisy), 1, 32000), 0).astype(np.int16)

    angle = math.radians(rng.uniform(-10.0, 10.0))
    cos, sin = math.cos(angle), math.sin(angle)
    # an LPS-like flip of x and y combined with a small in-plane rotation
    direction = np.array([[-cos, sin, 0.0], [-sin, -cos, 0.0], [0.0, 0.0, 1.0]])
    origin = (rng.uniform(-130, -90), rng.uniform(-120, -80), rng.uniform(-40, 40))
    geometry = {"spacing_xyz": tuple(reversed(spacing)), "origin": origin, "direction": direction}
    return image, label, geometry


def _ellipsoid_distance(grids: list[np.ndarray], centre: list[float], radii: tuple[float, ...]) -> np.ndarray:
    """1 on the surface of the axis-aligned ellipsoid, < 1 inside (broadcast over sparse grids)."""
    squared = [((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)]
    return np.sqrt(sum(squared[1:], squared[0]))


def _write(path: Path, array: np.ndarray, geometry: dict) -> None:
    """Write ``(C, z, y, x)`` as 3D (C == 1) or 4D NIfTI (channels on the 4th axis, as MSD does)."""
    if array.shape[0] == 1:
        image = sitk.GetImageFromArray(array[0])
        image.SetSpacing(geometry["spacing_xyz"])
        image.SetOrigin(geometry["origin"])
        image.SetDirection(geometry["direction"].ravel().tolist())
    else:
        image = sitk.GetImageFromArray(array, isVector=False)
        image.SetSpacing((*geometry["spacing_xyz"], 1.0))
        image.SetOrigin((*geometry["origin"], 0.0))
        direction = np.eye(4)
        direction[:3, :3] = geometry["direction"]
        image.SetDirection(direction.ravel().tolist())
    save_image(path, image)
