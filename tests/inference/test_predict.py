"""`selfunet predict`: input layouts, output names and headers, odd sizes, fold averaging, errors.

Two folds of the tiny plan (conftest ``tiny_work``) are trained once per module for a couple of
iterations: the tests check the plumbing (geometry, names, averaging), not segmentation quality.
Most predictions run without mirroring to stay fast; the out-of-fold validation uses it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.data.dataset import DatasetSpec
from selfunet.preprocessing.revert import load_probabilities

runner = CliRunner()
TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained_work(tiny_work_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folds 0 (without) and 1 (with out-of-fold validation prediction) of the tiny plan."""
    work = Path(shutil.copytree(tiny_work_template, tmp_path_factory.mktemp("trained") / "work"))
    for fold, validation in ((0, "--no-predict-validation"), (1, "--predict-validation")):
        result = runner.invoke(app, ["train", str(work), "-c", "3d_fullres", "-f", str(fold), *TRAIN, validation])
        assert result.exit_code == 0, result.output
    return work


def predict(inputs: list[Path], out: Path, work: Path, *extra: str):
    return runner.invoke(app, ["predict", *map(str, inputs), "-o", str(out), "-w", str(work), "-c", "3d_fullres",
                               *extra])


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def assert_same_geometry(prediction: sitk.Image, reference: sitk.Image) -> None:
    """Size, spacing, origin and direction of the first three axes (a 4D input has a 4th)."""
    if reference.GetDimension() == 4:
        size = list(reference.GetSize())
        reference = sitk.Extract(reference, size=[*size[:3], 0], index=[0, 0, 0, 0])
    assert prediction.GetSize() == reference.GetSize()
    assert prediction.GetSpacing() == pytest.approx(reference.GetSpacing(), abs=1e-6)
    assert prediction.GetOrigin() == pytest.approx(reference.GetOrigin(), abs=1e-6)
    assert prediction.GetDirection() == pytest.approx(reference.GetDirection(), abs=1e-6)


def write_case(folder: Path, case_id: str, shape: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
               channels: int = 2, seed: int = 0) -> list[Path]:
    """A synthetic case in nnU-Net v2 naming: noise plus a bright ellipsoid, one file per channel."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    blob = ((zz / 0.6) ** 2 + (yy / 0.4) ** 2 + (xx / 0.5) ** 2) < 1
    paths = []
    for c in range(channels):
        array = (rng.normal(100, 10, shape) + 80 * blob * (c + 1)).astype(np.float32)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing_xyz)
        image.SetOrigin((-12.5, 30.0, 7.25))
        path = folder / f"{case_id}_{c:04d}.nii.gz"
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths


def test_msd_and_nnunetv2_inputs_give_same_labels_names_and_headers(
    trained_work: Path, demo_dataset: DatasetSpec, demo_dataset_nnunetv2: DatasetSpec, tmp_path: Path
) -> None:
    msd_in, v2_in = Path(demo_dataset.root) / "imagesTs", Path(demo_dataset_nnunetv2.root) / "imagesTs"
    assert predict([msd_in], tmp_path / "msd", trained_work, "-f", "0", "--no-mirroring").exit_code == 0
    assert predict([v2_in], tmp_path / "v2", trained_work, "-f", "0", "--no-mirroring").exit_code == 0

    msd_names = sorted(p.name for p in msd_in.glob("*.nii.gz"))
    assert sorted(p.name for p in (tmp_path / "msd").iterdir()) == msd_names
    assert sorted(p.name for p in (tmp_path / "v2").iterdir()) == msd_names  # case_0000 -> case
    for name in msd_names:
        labels_msd, image_msd = read(tmp_path / "msd" / name)
        labels_v2, image_v2 = read(tmp_path / "v2" / name)
        np.testing.assert_array_equal(labels_msd, labels_v2)
        assert set(np.unique(labels_msd)) <= {0, 1, 2}
        assert_same_geometry(image_msd, sitk.ReadImage(str(msd_in / name)))
        assert_same_geometry(image_v2, sitk.ReadImage(str(v2_in / name.replace(".nii.gz", "_0000.nii.gz"))))


def test_single_file_input(trained_work: Path, demo_dataset: DatasetSpec, tmp_path: Path) -> None:
    source = sorted((Path(demo_dataset.root) / "imagesTs").glob("*.nii.gz"))[0]
    result = predict([source], tmp_path / "out", trained_work, "-f", "0", "--no-mirroring")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == [source.name]


def test_volumes_smaller_and_much_larger_than_the_patch(trained_work: Path, tmp_path: Path) -> None:
    # plan spacing is about 3.2 x 0.8 x 0.8 mm (z, y, x) and the tiny patch 16 x 32 x 32
    inputs = tmp_path / "in"
    inputs.mkdir()
    shapes = {"small": (5, 12, 20), "large": (32, 100, 90)}
    write_case(inputs, "small", shapes["small"], (0.8, 0.8, 3.2), seed=1)
    write_case(inputs, "large", shapes["large"], (0.75, 0.85, 3.0), seed=2)
    result = predict([inputs], tmp_path / "out", trained_work, "-f", "0", "--no-mirroring")
    assert result.exit_code == 0, result.output
    for case_id, shape in shapes.items():
        labels, image = read(tmp_path / "out" / f"{case_id}.nii.gz")
        assert labels.shape == shape
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert_same_geometry(image, sitk.ReadImage(str(inputs / f"{case_id}_0000.nii.gz")))


def test_two_folds_average_their_probabilities(trained_work: Path, demo_dataset: DatasetSpec,
                                               tmp_path: Path) -> None:
    source = sorted((Path(demo_dataset.root) / "imagesTs").glob("*.nii.gz"))[0]
    case_id = source.name[: -len(".nii.gz")]
    probabilities = {}
    for name, folds in (("f0", ["-f", "0"]), ("f1", ["-f", "1"]), ("both", ["-f", "0", "-f", "1"]),
                        ("all", [])):
        result = predict([source], tmp_path / name, trained_work, *folds, "--no-mirroring", "--save-probabilities")
        assert result.exit_code == 0, result.output
        probabilities[name], properties = load_probabilities(tmp_path / name / f"{case_id}.npz")
    assert not np.allclose(probabilities["f0"], probabilities["f1"], atol=1e-2)  # the folds differ
    expected = (probabilities["f0"] + probabilities["f1"]) / 2
    np.testing.assert_allclose(probabilities["both"], expected, atol=2e-3)  # stored as float16
    np.testing.assert_allclose(probabilities["all"], probabilities["both"], atol=1e-3)  # default: every fold

    both = probabilities["both"]
    assert both.shape[0] == 3 and list(both.shape[1:]) == list(properties.shape_after_crop)
    np.testing.assert_allclose(both.sum(0), 1.0, atol=5e-3)
    labels, _ = read(tmp_path / "both" / source.name)
    box = tuple(slice(lo, hi) for lo, hi in properties.crop_bbox)
    cropped = labels[box]
    margin = np.sort(both, axis=0)
    decided = (margin[-1] - margin[-2]) > 5e-3  # argmax unambiguous despite float16 storage
    np.testing.assert_array_equal(cropped[decided], both.argmax(0)[decided])


def test_missing_checkpoint_is_a_clear_error(trained_work: Path, demo_dataset: DatasetSpec, tmp_path: Path) -> None:
    inputs = Path(demo_dataset.root) / "imagesTs"
    result = predict([inputs], tmp_path / "out", trained_work, "-f", "3")
    assert result.exit_code == 1
    assert "fold_3" in result.output and "checkpoint" in result.output

    untrained = tmp_path / "untrained"
    shutil.copytree(trained_work, untrained, ignore=shutil.ignore_patterns("train"))
    result = predict([inputs], tmp_path / "out2", untrained)
    assert result.exit_code == 1
    assert "train first" in result.output


def test_wrong_channel_count_is_a_clear_error(trained_work: Path, tmp_path: Path) -> None:
    one_channel = tmp_path / "one"
    one_channel.mkdir()
    (path,) = write_case(one_channel, "mono", (8, 40, 40), (0.8, 0.8, 3.2), channels=1)
    single = path.rename(one_channel / "mono.nii.gz")  # MSD naming: one 3D file = one channel
    result = predict([single], tmp_path / "out", trained_work, "-f", "0")
    assert result.exit_code == 1
    assert "mono" in result.output and "1 channel(s)" in result.output and "expects 2" in result.output

    missing = tmp_path / "missing"
    missing.mkdir()
    write_case(missing, "half", (8, 40, 40), (0.8, 0.8, 3.2), channels=1)  # only half_0000
    result = predict([missing], tmp_path / "out2", trained_work, "-f", "0")
    assert result.exit_code == 1
    assert "half_0001" in result.output


def test_out_of_fold_validation_predictions_after_training(trained_work: Path, demo_dataset: DatasetSpec) -> None:
    import json

    fold_dir = trained_work / "train" / "3d_fullres" / "fold_1"
    validation_cases = json.loads((fold_dir / "training_summary.json").read_text())["validation_cases"]
    assert validation_cases
    written = sorted(p.name for p in (fold_dir / "validation").iterdir())
    assert written == sorted([f"{c}.nii.gz" for c in validation_cases] + [f"{c}.npz" for c in validation_cases])
    for case_id in validation_cases:
        _, image = read(fold_dir / "validation" / f"{case_id}.nii.gz")
        reference = sitk.ReadImage(str(Path(demo_dataset.root) / "labelsTr" / f"{case_id}.nii.gz"))
        assert_same_geometry(image, reference)
        probabilities, properties = load_probabilities(fold_dir / "validation" / f"{case_id}.npz")
        assert probabilities.shape[0] == 3 and properties.case_id == case_id
    assert not (trained_work / "train" / "3d_fullres" / "fold_0" / "validation").exists()


def test_the_cli_predicts_in_openvino_and_in_torch_alike(trained_work: Path, demo_dataset: DatasetSpec,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`selfunet predict --backend openvino|torch` on real files: the same labels up to exact float ties,
    and the converted graph cached on disk for the next run."""
    monkeypatch.setenv("SELFUNET_CACHE_DIR", str(tmp_path / "cache"))
    images = Path(demo_dataset.root) / "imagesTs"
    for backend in ("torch", "openvino"):
        result = predict([images], tmp_path / backend, trained_work, "-f", "0", "--amp", "off", "--backend", backend)
        assert result.exit_code == 0, result.output
    for file in sorted((tmp_path / "torch").iterdir()):
        torch_labels, _ = read(file)
        openvino_labels, _ = read(tmp_path / "openvino" / file.name)
        assert np.mean(torch_labels == openvino_labels) >= 0.9999, file.name
    assert list((tmp_path / "cache" / "openvino-ir").glob("*.xml"))
    result = predict([images], tmp_path / "bad", trained_work, "-f", "0", "--backend", "onnx")
    assert result.exit_code != 0 and "backend" in result.output
