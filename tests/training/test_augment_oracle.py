"""Oracle: the augmentation's rules and parameter distributions against the reference's own
functions (nnU-Net v2's default trainer and batchgeneratorsv2 transforms, run with the
reference's python in a subprocess): read-patch size, rotation range, per-slice decision and
mirror axes for 2D/3D/anisotropic patches; probabilities of every transform; the distributions of
the affine map (rotation x scale), of the noise standard deviation, and of the cascade's
perturbation parameters."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from scipy import stats

from selfunet.training.augment import AugmentationConfig, Augmenter

PATCHES = [
    (128, 128, 128), (64, 192, 160), (20, 320, 256), (6, 48, 48), (40, 112, 96), (80, 64, 48),
    (512, 512), (512, 256), (40, 24), (24, 20), (384, 260), (96, 143),
]
#: small patches of each rotation rule for drawing many spatial parameters (the reference builds
#: its sampling grid while drawing)
DRAW_PATCHES = [(12, 14, 16), (4, 24, 24), (24, 24), (40, 24)]
N = 2000

_REFERENCE = r"""
import json, sys
import numpy as np, torch
from types import SimpleNamespace
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

patches, draw_patches, n = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
np.random.seed(0)
torch.manual_seed(0)
configure = nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size

def rules(patch):
    stub = SimpleNamespace(configuration_manager=SimpleNamespace(patch_size=patch),
                           print_to_log_file=lambda *a, **k: None)
    rotation, dummy_2d, initial, mirror = configure(stub)
    return {"rotation": [float(np.degrees(r)) for r in rotation], "per_slice": bool(dummy_2d),
            "read": [int(v) for v in initial], "mirror": list(mirror)}

out = {"rules": [rules(p) for p in patches], "draws": []}
for patch in draw_patches:
    r = rules(patch)
    rotation = tuple(np.radians(r["rotation"]))
    transforms = nnUNetTrainer.get_training_transforms(patch, rotation, None, tuple(r["mirror"]), r["per_slice"],
                                                       use_mask_for_norm=[True], is_cascaded=True,
                                                       foreground_labels=[1, 2])
    spatial = next(t for t in transforms.transforms if type(t).__name__ == "SpatialTransform")
    shape = patch[1:] if r["per_slice"] else patch
    matrices = []
    for _ in range(n):
        affine = spatial.get_parameters(image=torch.zeros(1, *shape))["affine"]
        matrices.append(None if affine is None else np.asarray(affine, dtype=float).tolist())
    out["draws"].append(matrices)

probabilities, details = {}, {}
for t in transforms.transforms:
    inner = getattr(t, "transform", None)
    if inner is not None:
        probabilities[type(inner).__name__] = t.apply_probability
        details[type(inner).__name__] = {k: v for k, v in vars(inner).items()
                                         if isinstance(v, (int, float, tuple, list)) and not isinstance(v, bool)}
    else:
        details[type(t).__name__] = {k: v for k, v in vars(t).items()
                                     if isinstance(v, (int, float, tuple, list)) and not isinstance(v, bool)}
out["probabilities"] = probabilities
out["details"] = json.loads(json.dumps(details, default=str))
noise = next(t.transform for t in transforms.transforms
             if type(getattr(t, "transform", None)).__name__ == "GaussianNoiseTransform")
out["noise"] = [float(noise.get_parameters(image=torch.zeros(2, 4, 4, 4))["sigmas"]) for _ in range(n)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def reference(reference_python: str) -> dict:
    run = subprocess.run(
        [reference_python, "-c", _REFERENCE, json.dumps(PATCHES), json.dumps(DRAW_PATCHES), str(N)],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.oracle
def test_read_patch_rotation_range_per_slice_and_mirror_axes_match(reference: dict) -> None:
    cfg = AugmentationConfig()
    for patch, ref in zip(PATCHES, reference["rules"]):
        aug = Augmenter(cfg, patch, len(patch))
        assert aug.read_patch_size == tuple(ref["read"]), patch
        assert aug.per_slice == ref["per_slice"], patch
        assert list(aug.rotation_degrees) == pytest.approx(ref["rotation"]), patch
        assert list(aug.mirror_axes) == ref["mirror"], patch


@pytest.mark.oracle
def test_transform_probabilities_and_ranges_match(reference: dict) -> None:
    cfg = AugmentationConfig()
    p = reference["probabilities"]
    assert p["GaussianNoiseTransform"] == cfg.p_noise
    assert p["GaussianBlurTransform"] == cfg.p_blur
    assert p["MultiplicativeBrightnessTransform"] == cfg.p_brightness
    assert p["ContrastTransform"] == cfg.p_contrast
    assert p["SimulateLowResolutionTransform"] == cfg.p_lowres
    assert p["ApplyRandomBinaryOperatorTransform"] == cfg.p_seg_morphology
    assert p["RemoveRandomConnectedComponentFromOneHotEncodingTransform"] == cfg.p_seg_component_removal
    d = reference["details"]
    assert d["SpatialTransform"]["p_rotation"] == cfg.p_rotation
    assert d["SpatialTransform"]["p_scaling"] == cfg.p_scaling
    assert tuple(d["SpatialTransform"]["scaling"]) == cfg.scale_range
    assert tuple(d["GaussianNoiseTransform"]["noise_variance"]) == cfg.noise_std
    assert tuple(d["GaussianBlurTransform"]["blur_sigma"]) == cfg.blur_sigma
    assert d["GaussianBlurTransform"]["p_per_channel"] == cfg.p_blur_per_channel
    assert tuple(d["SimulateLowResolutionTransform"]["scale"]) == cfg.lowres_zoom
    assert d["SimulateLowResolutionTransform"]["p_per_channel"] == cfg.p_lowres_per_channel
    assert tuple(d["ApplyRandomBinaryOperatorTransform"]["strel_size"]) == cfg.seg_morphology_radius
    assert d["ApplyRandomBinaryOperatorTransform"]["p_per_label"] == cfg.p_seg_morphology_per_class
    removal = d["RemoveRandomConnectedComponentFromOneHotEncodingTransform"]
    assert removal["p_per_label"] == cfg.p_seg_component_removal_per_class
    assert removal["dont_do_if_covers_more_than_x_percent"] == cfg.seg_component_max_fraction
    assert removal["fill_with_other_class_p"] == 0


@pytest.mark.oracle
def test_noise_standard_deviation_distribution_matches(reference: dict) -> None:
    ours = Augmenter(AugmentationConfig(), (8, 8, 8), 3).draw(N, 1, torch.Generator().manual_seed(0)).noise_std
    assert stats.ks_2samp(ours.numpy(), np.asarray(reference["noise"])).pvalue > 1e-3


@pytest.mark.oracle
@pytest.mark.parametrize("which", range(len(DRAW_PATCHES)))
def test_affine_distribution_matches(reference: dict, which: int) -> None:
    """Fraction transformed, the scale (|det|^(1/k)) of scaled samples, and every entry of the
    rotation-only matrices: two-sample Kolmogorov-Smirnov against the reference's draws."""
    patch = DRAW_PATCHES[which]
    aug = Augmenter(AugmentationConfig(), patch, len(patch))
    params = aug.draw(N, 1, torch.Generator().manual_seed(which))
    ref = [np.asarray(m) for m in reference["draws"][which] if m is not None]
    ref_fraction = len(ref) / N
    ours_fraction = float(params.spatial.double().mean())
    assert abs(ours_fraction - ref_fraction) < 4 * np.sqrt(0.36 * 0.64 / N) * 1.5
    ref = np.stack(ref)
    k = ref.shape[1]
    ours = params.matrix[params.spatial].numpy()
    assert ours.shape[1] == k
    ref_scale = np.abs(np.linalg.det(ref)) ** (1 / k)
    our_scale = np.abs(np.linalg.det(ours)) ** (1 / k)
    scaled_ours, scaled_ref = our_scale[np.abs(our_scale - 1) > 1e-9], ref_scale[np.abs(ref_scale - 1) > 1e-9]
    assert stats.ks_2samp(scaled_ours, scaled_ref).pvalue > 1e-3
    ref_rot = ref[np.abs(ref_scale - 1) < 1e-9]
    our_rot = ours[np.abs(our_scale - 1) < 1e-9]
    for i in range(k):
        for j in range(k):
            p = stats.ks_2samp(our_rot[:, i, j], ref_rot[:, i, j]).pvalue
            assert p > 1e-4, (patch, i, j, p)
