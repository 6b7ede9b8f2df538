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
NOISE_SIGMA = 7.0
#: the test cases' reference labels (not listed in dataset.json, as in a challenge: the held-out
#: answers a task descriptor's ``test_labels:`` points at for ``harness score``).
TEST_LABELS = "labelsTs"


def make_demo_dataset(out: Path, num_training: int = 12, num_test: int = 3, seed: int = 0) -> DatasetSpec:
    """Write the demo task into ``out`` (MSD layout) and return it parsed.

    Returns at once when ``out`` already holds a complete demo made with the same parameters.
    Refuses to write into a folder that holds some other dataset (a ``dataset.json`` without
    the demo marker), so a user's data is never overwritten.
    """
    if num_training < 1 or num_test < 0:
        raise SelfUNetError(
            f"demo data: need at least 1 training case and no negative test count, got "
            f"num_training={num_training}, num_test={num_test}."
        )
    out = Path(out)
    params = {"version": DEMO_VERSION, "num_training": num_training, "num_test": num_test, "seed": seed}
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
    for sub in ("imagesTr", "labelsTr", "imagesTs", TEST_LABELS):
        (out / sub).mkdir(exist_ok=True)
        for stale in (out / sub).glob("demo_*.nii.gz"):
            stale.unlink()

    train_numbers = list(range(num_training))
    first_test = max(100, num_training)
    test_numbers = list(range(first_test, first_test + num_test))
    training = []
    for number in train_numbers:
        case_id = f"demo_{number:03d}"
        image, label, geometry = _make_case(seed, number)
        _write(out / "imagesTr" / f"{case_id}.nii.gz", image, geometry)
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
            "name": "SelfUNetDemo",
            "description": "Synthetic two-channel MR-like task: organ and lesion (selfunet demo-data)",
            "reference": "generated by selfunet.data.demo",
            "licence": "CC0",
            "release": str(DEMO_VERSION),
            "tensorImageSize": "4D",
            "modality": MODALITIES,
            "labels": LABELS,
            "numTraining": num_training,
            "numTest": num_test,
            "training": training,
            "test": test,
        },
    )
    atomic_write_json(marker, {"params": params, "complete": True})
    log.info("wrote demo dataset (%d training, %d test cases) to %s", num_training, num_test, out)
    return load_dataset(out)


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _make_case(seed: int, number: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """One case: image ``(2, z, y, x)`` int16, label ``(z, y, x)`` uint8 and its header."""
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
    image = np.zeros((2, *shape), dtype=np.int16)
    for channel, means in enumerate(TISSUE_MEANS):
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
