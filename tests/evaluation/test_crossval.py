"""Cross-validation merge and evaluation on a fake work directory (no training: the fold folders
are written directly, labels as real NIfTI files and probabilities with ``save_probabilities``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from selfunet.data.io import ImageGeometry, read_image, write_label
from selfunet.errors import SelfUNetError
from selfunet.evaluation.crossval import CrossvalResult, crossval_dir, is_complete, load_references, run_crossval
from selfunet.planning.fingerprint_types import DatasetSummary, Fingerprint
from selfunet.preprocessing.preprocess import GeometryRecord, PreprocessedCase
from selfunet.preprocessing.revert import labels_from_cropped_probabilities, save_probabilities
from selfunet.training.splits import make_splits, save_splits
from selfunet.workdir import WorkDir

SHAPE = (8, 16, 16)
BBOX = [[1, 7], [2, 14], [2, 14]]
CROP = [b - a for a, b in BBOX]
LABELS = {0: "background", 1: "organ", 2: "lesion"}
GEOMETRY = ImageGeometry(shape=SHAPE, spacing=(2.0, 0.9, 0.9), origin=(0.0, 0.0, 0.0),
                         direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

#: makes crop-space probabilities (K, *CROP) of one case from its cropped reference and index.
ProbabilityMaker = Callable[[np.ndarray, int], np.ndarray]


def reference_label(index: int) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:6, 4:11, 4 + index % 3:11 + index % 3] = 1
    labels[3:5, 6:8, 6:8] = 2
    return labels


def one_hot(cropped: np.ndarray, sharpness: float = 0.9) -> np.ndarray:
    rest = (1.0 - sharpness) / (len(LABELS) - 1)
    probabilities = np.full((len(LABELS), *cropped.shape), rest, np.float32)
    for k in LABELS:
        probabilities[k][cropped == k] = sharpness
    return probabilities


def exact(cropped: np.ndarray, index: int) -> np.ndarray:
    return one_hot(cropped)


def lesion_missed(cropped: np.ndarray, index: int) -> np.ndarray:
    return one_hot(np.where(cropped == 2, 1, cropped).astype(np.uint8))


def properties_of(case_id: str) -> PreprocessedCase:
    return PreprocessedCase(
        case_id=case_id, geometry=GeometryRecord.of(GEOMETRY), shape_before_crop=list(SHAPE), crop_bbox=BBOX,
        shape_after_crop=CROP, spacing=list(GEOMETRY.spacing), target_spacing=list(GEOMETRY.spacing),
        shape_after_resampling=CROP, classes_present=[1, 2], transpose_forward=[0, 1, 2],
    )


def crop(labels: np.ndarray) -> np.ndarray:
    return labels[tuple(slice(a, b) for a, b in BBOX)]


def build_work(root: Path, num_cases: int = 6, num_folds: int = 3) -> WorkDir:
    """A dataset (nnU-Net v2 layout, labels only), its fingerprint and the splits."""
    dataset = root / "dataset"
    case_ids = [f"case_{i:03d}" for i in range(num_cases)]
    for i, case_id in enumerate(case_ids):
        write_label(dataset / "labelsTr" / f"{case_id}.nii.gz", reference_label(i), GEOMETRY)
    (dataset / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {v: k for k, v in LABELS.items()}, "file_ending": ".nii.gz",
        "numTraining": num_cases,
    }))
    work = WorkDir(root / "work")
    Fingerprint(
        dataset=DatasetSummary(root=str(dataset), name="fake", layout="nnunetv2", channel_names=["CT"],
                               labels={str(k): v for k, v in LABELS.items()}, file_ending=".nii.gz",
                               num_training=num_cases),
        cases=[], intensity=[], median_relative_size_after_crop=1.0, max_foreground_samples=0, seed=0,
    ).save(work.fingerprint)
    save_splits(work.splits, make_splits(case_ids, num_folds))
    return work


def write_validation(work: WorkDir, configuration: str, maker: ProbabilityMaker, folds: list[int] | None = None
                     ) -> None:
    """Out-of-fold predictions of ``configuration`` exactly as ``selfunet train`` leaves them."""
    splits = json.loads(work.splits.read_text())
    for k, fold in enumerate(splits):
        if folds is not None and k not in folds:
            continue
        out = work.training(configuration, k) / "validation"
        for case_id in fold["val"]:
            index = int(case_id.split("_")[1])
            probabilities = maker(crop(reference_label(index)), index)
            properties = properties_of(case_id)
            save_probabilities(out / f"{case_id}.npz", probabilities, properties)
            write_label(out / f"{case_id}.nii.gz", labels_from_cropped_probabilities(probabilities, properties),
                        GEOMETRY)


def test_merge_gathers_every_fold_and_evaluates(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "3d_fullres", lesion_missed)
    summary = run_crossval(work, "3d_fullres")
    out = crossval_dir(work, "3d_fullres")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"case_{i:03d}.nii.gz" for i in range(6)]
    assert len(list(out.glob("*.npz"))) == 6
    merged, _ = read_image(out / "case_004.nii.gz")
    assert np.array_equal(merged[0], np.where(reference_label(4) == 2, 1, reference_label(4)))
    # organ: Dice 2*|organ|/(|organ| + |organ|+|lesion|) < 1; lesion: 0 -> mean foreground well below 1
    assert 0.3 < summary.mean_foreground_dice < 0.55
    result = CrossvalResult.load(out / "crossval.json")
    assert [f.fold for f in result.folds] == [0, 1, 2]
    assert sorted(c for f in result.folds for c in f.cases) == [f"case_{i:03d}" for i in range(6)]
    assert result.mean_foreground_dice == pytest.approx(summary.mean_foreground_dice)
    fold_means = [f.mean_foreground_dice for f in result.folds]
    assert result.fold_spread.min == pytest.approx(min(fold_means))
    assert result.fold_spread.max == pytest.approx(max(fold_means))
    assert result.fold_spread.std == pytest.approx(float(np.std(fold_means)))
    for k in range(3):
        assert (out / f"fold_{k}" / "summary.json").is_file()
        assert (out / f"fold_{k}" / "per_case.csv").is_file()
    assert (out / "summary.json").is_file() and (out / "per_case.csv").is_file()


def test_perfect_predictions_score_one(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "2d", exact)
    assert run_crossval(work, "2d").mean_foreground_dice == pytest.approx(1.0)


def test_merged_files_are_hard_links_when_possible(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "3d_fullres", exact)
    run_crossval(work, "3d_fullres")
    source = work.training("3d_fullres", 0) / "validation"
    case = next(source.glob("*.npz"))
    assert os.path.samefile(case, crossval_dir(work, "3d_fullres") / case.name)


def test_missing_fold_is_named_with_the_command_to_run(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "3d_fullres", exact, folds=[0, 2])
    with pytest.raises(SelfUNetError, match=r"fold 1: no validation predictions") as info:
        run_crossval(work, "3d_fullres")
    assert f"selfunet train {work.root} -c 3d_fullres -f 1" in str(info.value)
    assert "fold 0" not in str(info.value)
    assert not is_complete(work, "3d_fullres")


def test_missing_case_of_a_trained_fold_suggests_resume(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "3d_fullres", exact)
    folder = work.training("3d_fullres", 2) / "validation"
    victim = sorted(folder.glob("*.npz"))[0]
    victim.unlink()
    (work.training("3d_fullres", 2) / "checkpoint_final.pt").write_bytes(b"")
    with pytest.raises(SelfUNetError, match=victim.stem) as info:
        run_crossval(work, "3d_fullres")
    assert "-f 2 --resume" in str(info.value)


def test_rerun_is_skipped_until_an_input_changes(tmp_path):
    work = build_work(tmp_path)
    write_validation(work, "3d_fullres", lesion_missed)
    run_crossval(work, "3d_fullres")
    result_path = crossval_dir(work, "3d_fullres") / "crossval.json"
    first_mtime = result_path.stat().st_mtime_ns
    run_crossval(work, "3d_fullres")
    assert result_path.stat().st_mtime_ns == first_mtime
    # a fold is re-predicted (newer files): the merge and evaluation are redone with the new files
    write_validation(work, "3d_fullres", exact)
    later = max(p.stat().st_mtime for p in work.training("3d_fullres", 0).glob("validation/*")) + 5
    for path in (work.root / "train" / "3d_fullres").glob("fold_*/validation/*"):
        os.utime(path, (later, later))
    summary = run_crossval(work, "3d_fullres")
    assert summary.mean_foreground_dice == pytest.approx(1.0)
    assert result_path.stat().st_mtime_ns != first_mtime


def test_dataset_labels_folder_is_used_when_named_by_case_id(tmp_path):
    work = build_work(tmp_path)
    dataset = Path(Fingerprint.load(work.fingerprint).dataset.root)
    references = load_references(work)
    assert references.folder == dataset / "labelsTr"
    assert references.labels == {1: "organ", 2: "lesion"}
    assert references.path("case_001").is_file()


def test_labels_named_otherwise_get_a_reference_folder_of_links(tmp_path):
    work = build_work(tmp_path)
    msd = tmp_path / "msd"
    training = []
    for i in range(6):
        write_label(msd / "labelsTr" / f"gt_{i}.nii.gz", reference_label(i), GEOMETRY)
        training.append({"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/gt_{i}.nii.gz"})
    (msd / "dataset.json").write_text(json.dumps({
        "modality": {"0": "CT"}, "labels": {str(k): v for k, v in LABELS.items()}, "training": training,
    }))
    fingerprint = Fingerprint.load(work.fingerprint)
    fingerprint.model_copy(update={"dataset": fingerprint.dataset.model_copy(update={"root": str(msd)})}).save(
        work.fingerprint)
    references = load_references(work)
    assert references.folder == work.root / "crossval" / "reference"
    assert np.array_equal(read_image(references.path("case_002"))[0][0], reference_label(2))
    write_validation(work, "3d_fullres", exact)
    assert run_crossval(work, "3d_fullres").mean_foreground_dice == pytest.approx(1.0)
