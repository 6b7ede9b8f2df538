"""An nnU-Net v2 trained model on the leaderboard: trained by the reference, imported with
`selfunet import-nnunet`, packaged as a grand-challenge container with `harness export gc --model`
and scored by `harness score` on the demo test set, beside the same model given as a model.zip and
as the nnU-Net folder itself (`-s NAME=MODEL`, predicted with `selfunet predict --model`).

The reference trains one small 3d_fullres model (tests/interop/reference_driver.py: 8 features in
the first stage, a 12 x 32 x 32 patch, 30 iterations: it finds the organ). The container and the two model submissions
run the same prediction, so their per-case Dice must be equal. All predict without mirroring.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.challenge import gc_export as gc
from harness.challenge.score import ScoreOptions, parse_submission, score_task
from harness.tasks.descriptor import TaskDescriptor
from selfunet.cli import app

pytestmark = [pytest.mark.docker, pytest.mark.oracle]

DRIVER = Path(__file__).resolve().parents[1] / "interop" / "reference_driver.py"
TAG = f"selfunet-gc-nnunet-test-{os.getpid()}"
DATASET = "Dataset931_Demo"


@pytest.fixture(scope="module")
def nnunet_model(reference_python: str, demo_dataset_nnunetv2, tmp_path_factory) -> Path:
    """The reference's trainer folder of a small 3d_fullres model of the demo task."""
    root = tmp_path_factory.mktemp("nnunet_model")
    shutil.copytree(demo_dataset_nnunetv2.root, root / "raw" / DATASET)
    job = {"raw": str(root / "raw"), "preprocessed": str(root / "preprocessed"), "results": str(root / "results"),
           "datasets": [{"id": 931, "configurations": ["3d_fullres"], "features": 8, "iterations": 30,
                         "val_cases": 1, "max_patch": {"3d": [12, 32, 32]}}]}
    (root / "job.json").write_text(json.dumps(job))
    done = subprocess.run([reference_python, str(DRIVER), str(root / "job.json")], capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return root / "results" / DATASET / "nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="module")
def task(demo_root: Path) -> TaskDescriptor:
    return TaskDescriptor.model_validate({"name": "demo", "dataset": str(demo_root),
                                          "test_labels": str(demo_root / "labelsTs"),
                                          "scoring": {"case_timeout_s": 180, "cpus": 2}})


def _csv(path: Path) -> dict[tuple[str, str], str]:
    with open(path, newline="") as handle:
        return {(r["case"], r["class"]): r["dice"] for r in csv.DictReader(handle) if r["status"] == "ok"}


def test_an_imported_nnunet_model_is_scored_in_a_container(engine, project_image, nnunet_model: Path,
                                                           task: TaskDescriptor, tmp_path: Path) -> None:
    archive = tmp_path / "nnunet.zip"
    result = CliRunner().invoke(app, ["import-nnunet", str(nnunet_model), "-o", str(archive)])
    assert result.exit_code == 0, result.output
    context = gc.export_gc(None, tmp_path / "gc", image=project_image, tag=f"{TAG}:latest", mirroring=False,
                           model=archive, dataset=task.dataset)
    checked = gc.test_container(context, client=engine)  # the container predicts what `selfunet predict --model` does
    assert checked["agrees"], checked
    subs = [parse_submission(f"nnunet-container={TAG}:latest"), parse_submission(f"nnunet-archive={archive}"),
            parse_submission(f"nnunet-folder={nnunet_model}")]
    assert [s.kind for s in subs] == ["container", "model", "model"]
    out = score_task(task, subs, tmp_path / "work", tmp_path / "results", ScoreOptions(selfunet_mirroring=False),
                     selfunet=False)
    assert all(r.status == "ok" for rows in out.values() for r in rows), out
    scores = tmp_path / "results" / "demo" / "scores"
    container, zipped, folder = (_csv(scores / f"{s.name}.csv") for s in subs)
    assert container == zipped == folder and len(container) == 2 * len(out["nnunet-container"])
    assert max(float(d) for (_, name), d in container.items() if name == "organ") > 0.3
    record = json.loads((scores / "nnunet-folder.json").read_text())
    assert record["kind"] == "model" and record["members"] == ["3d_fullres"]
    with open(scores / "leaderboard.csv", newline="") as handle:
        board = {r["submission"] for r in csv.DictReader(handle)}
    assert board == {s.name for s in subs}
    engine.images.remove(f"{TAG}:latest", force=True)
