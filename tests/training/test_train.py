"""`selfunet train`: exact resume after SIGKILL / SIGTERM, determinism, schedule, CLI errors.

Every run uses the tiny plan of ``tiny_work`` (conftest), so an iteration takes a fraction of a
second. Runs that must survive a signal or set global torch flags (``--deterministic``) run the
real console script in a subprocess; the rest go through Typer's CliRunner in-process.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from selfunet.cli import app
from selfunet.runtime import load_checkpoint
from selfunet.training.train import CHECKPOINT_BEST, CHECKPOINT_FINAL, CHECKPOINT_LATEST, poly_lr
from selfunet.training.training_log import PlainProgress, read_log

EPOCHS = 4
ITERATIONS = 24
BUDGET = ["--epochs", str(EPOCHS), "--iterations-per-epoch", str(ITERATIONS), "--validation-iterations", "1",
          "--checkpoint-every", "1", "--deterministic", "--no-predict-validation", "--device", "cpu", "--seed", "3"]


def train_command(work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "selfunet.cli", "train", str(work), "-c", "3d_fullres", "-f", "0", *extra]


def run_train(work: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(work, *extra), capture_output=True, text=True, timeout=timeout)


def fold_dir(work: Path, fold: int = 0) -> Path:
    return work / "train" / "3d_fullres" / f"fold_{fold}"


def final_weights(work: Path, fold: int = 0) -> dict[str, torch.Tensor]:
    return load_checkpoint(fold_dir(work, fold) / CHECKPOINT_FINAL)["network"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_complete_run(work: Path) -> None:
    """Every planned epoch logged exactly once, final checkpoint loadable, no temp files."""
    out = fold_dir(work)
    epochs = [r["epoch"] for r in read_log(out / "log.jsonl")]
    assert epochs == list(range(EPOCHS))
    final = load_checkpoint(out / CHECKPOINT_FINAL)
    assert (final["epoch"], final["iteration"]) == (EPOCHS, 0)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert not leftovers


@pytest.fixture(scope="module")
def reference_run(tiny_work_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run with the shared budget; the interrupted runs must end identical."""
    import shutil

    work = Path(shutil.copytree(tiny_work_template, tmp_path_factory.mktemp("reference") / "work"))
    result = run_train(work, *BUDGET)
    assert result.returncode == 0, result.stderr
    return work


def wait_for(condition, process: subprocess.Popen, timeout: float = 300.0, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"training ended (rc {process.returncode}) before the awaited state:\n"
                                 f"{process.stderr.read() if process.stderr else ''}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the training subprocess")
        time.sleep(poll)


def latest_epoch(out: Path) -> int:
    path = out / CHECKPOINT_LATEST
    if not path.is_file():
        return -1
    try:
        return int(load_checkpoint(path)["epoch"])
    except Exception:  # being replaced right now
        return -1


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_work: Path, reference_run: Path) -> None:
    out = fold_dir(tiny_work)
    process = subprocess.Popen(train_command(tiny_work, *BUDGET), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: latest_epoch(out) >= 1, process)
        # land inside epoch 1: a few iterations after the checkpoint of its start
        seconds = read_log(out / "log.jsonl")[0]["epoch_seconds"]
        time.sleep(seconds * 3 / ITERATIONS)
        assert process.poll() is None, "the run finished before it could be killed; raise EPOCHS"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (out / CHECKPOINT_FINAL).exists()

    result = run_train(tiny_work, *BUDGET, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resuming at epoch" in result.stderr
    assert_complete_run(tiny_work)
    assert_same_weights(final_weights(tiny_work), final_weights(reference_run))


def test_sigterm_saves_latest_mid_epoch_and_resume_continues(tiny_work: Path, reference_run: Path) -> None:
    out = fold_dir(tiny_work)
    log_path = out / "log.jsonl"
    process = subprocess.Popen(train_command(tiny_work, *BUDGET), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(read_log(log_path)) >= 1 and (out / CHECKPOINT_LATEST).is_file(), process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert "stopped by signal" in stderr and "--resume" in stderr
    saved = load_checkpoint(out / CHECKPOINT_LATEST)
    assert saved["epoch"] >= 1
    assert 0 < saved["iteration"] <= ITERATIONS  # saved inside the epoch, not at its start
    assert not (out / CHECKPOINT_FINAL).exists()

    result = run_train(tiny_work, *BUDGET, "--resume")
    assert result.returncode == 0, result.stderr
    assert f"resuming at epoch {saved['epoch']}, iteration {saved['iteration']}" in result.stderr
    assert_complete_run(tiny_work)
    assert_same_weights(final_weights(tiny_work), final_weights(reference_run))


def test_deterministic_runs_repeat_and_seed_matters(tiny_work_template: Path, tmp_path: Path) -> None:
    import shutil

    budget = ["--epochs", "1", "--iterations-per-epoch", "3", "--validation-iterations", "1", "--deterministic",
              "--no-predict-validation", "--device", "cpu"]
    weights = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        work = Path(shutil.copytree(tiny_work_template, tmp_path / name))
        result = run_train(work, *budget, "--seed", str(seed))
        assert result.returncode == 0, result.stderr
        weights[name] = final_weights(work)
    assert_same_weights(weights["a"], weights["b"])
    assert any(not torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


# ---- in-process CLI: options, schedule, errors, artifacts ----------------------------------------
runner = CliRunner()
SHORT = ["--iterations-per-epoch", "2", "--validation-iterations", "1", "--no-predict-validation",
         "--device", "cpu"]


def cli_train(work: Path, *extra: str):
    return runner.invoke(app, ["train", str(work), "-c", "3d_fullres", *extra])


def test_poly_schedule_values() -> None:
    assert poly_lr(0.01, 0, 1000, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 500, 1000, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 999, 1000, 0.9) == pytest.approx(0.01 * 0.001**0.9)
    values = [poly_lr(0.01, e, 10, 0.9) for e in range(10)]
    assert all(a > b > 0 for a, b in itertools.pairwise(values))


def test_progress_is_printed_as_plain_lines_where_no_bar_can_be_drawn(tiny_work: Path, monkeypatch) -> None:
    """Written to a file (a harness job log, nohup, CI), rich draws its bar only at the end; plain
    lines every ``interval`` seconds say where the run is (here every iteration)."""
    monkeypatch.setattr(PlainProgress, "interval", 0.0)
    result = cli_train(tiny_work, "-f", "0", "--epochs", "2", "--amp", "off", *SHORT)
    assert result.exit_code == 0, result.output
    assert "precision: fp32 (--amp off)" in result.output
    lines = [line for line in result.output.splitlines() if "s/iteration" in line]
    assert [line.split("iteration ")[1].split(" ")[0] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(line.startswith("3d_fullres fold 0: ") and " left" in line for line in lines)
    summary = json.loads((fold_dir(tiny_work, 0) / "training_summary.json").read_text())
    assert summary["precision"] == "fp32 (--amp off)"


def test_cli_overrides_reach_config_schedule_log_and_artifacts(tiny_work: Path) -> None:
    result = cli_train(tiny_work, "-f", "1", "--epochs", "3", "--lr", "0.02", "--seed", "9",
                       "--checkpoint-every", "2", "--amp", "off", "--no-channels-last", *SHORT)
    assert result.exit_code == 0, result.output
    out = fold_dir(tiny_work, 1)
    config = json.loads((out / "train_config.json").read_text())
    assert config["epochs"] == 3 and config["iterations_per_epoch"] == 2 and config["validation_iterations"] == 1
    assert config["initial_lr"] == 0.02 and config["seed"] == 9 and config["checkpoint_every"] == 2
    assert config["amp"] == "off" and config["channels_last"] is False and config["predict_validation"] is False

    records = read_log(out / "log.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert [r["lr"] for r in records] == pytest.approx([poly_lr(0.02, e, 3, 0.9) for e in range(3)])
    for record in records:
        assert set(record) >= {"train_loss", "val_loss", "pseudo_dice", "pseudo_dice_ema", "pseudo_dice_per_class"}
        assert len(record["pseudo_dice_per_class"]) == 2  # organ + lesion
    assert (out / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in (CHECKPOINT_LATEST, CHECKPOINT_BEST, CHECKPOINT_FINAL):
        payload = load_checkpoint(out / name)
        assert payload["fold"] == 1 and payload["configuration"] == "3d_fullres"
        assert payload["grad_scaler"] == {}  # fp32: no loss scaling
    assert load_checkpoint(out / CHECKPOINT_FINAL)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        poly_lr(0.02, 2, 3, 0.9))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["fold"] == 1 and summary["validation_cases"]
    assert not set(summary["validation_cases"]) & set(summary["train_cases"])
    cost = json.loads((out / "cost.json").read_text())  # what the harness's leaderboards report per candidate
    assert cost["train_seconds"] > 0 and cost["predicted_cases"] == 0 and cost["memory"] == "rss"
    assert 50 < cost["peak_memory_mb"] < 64_000  # a process with torch loaded holds more than 50 MiB resident


def test_fold_out_of_range_is_a_clear_error(tiny_work: Path) -> None:
    result = cli_train(tiny_work, "-f", "7", "--epochs", "1", *SHORT)
    assert result.exit_code == 1
    assert "fold 7 does not exist" in result.output and "0..4" in result.output


def test_unknown_configuration_is_a_clear_error(tiny_work: Path) -> None:
    result = runner.invoke(app, ["train", str(tiny_work), "-c", "3d_lowres", "-f", "0"])
    assert result.exit_code == 1
    assert "3d_lowres" in result.output and "3d_fullres" in result.output


def test_existing_run_needs_resume_or_restart_and_same_budget(tiny_work: Path) -> None:
    assert cli_train(tiny_work, "-f", "0", "--epochs", "2", "--checkpoint-every", "1", *SHORT).exit_code == 0
    out = fold_dir(tiny_work)

    again = cli_train(tiny_work, "-f", "0", "--epochs", "2", *SHORT)
    assert again.exit_code == 1
    assert "--resume" in again.output and "--restart" in again.output

    done = cli_train(tiny_work, "-f", "0", "--epochs", "2", "--resume", *SHORT)
    assert done.exit_code == 0 and "complete" in done.output

    (out / CHECKPOINT_FINAL).unlink()  # as if killed after the last 'latest'
    other_budget = cli_train(tiny_work, "-f", "0", "--epochs", "5", "--resume", *SHORT)
    assert other_budget.exit_code == 1
    assert "epochs=2 (now 5)" in other_budget.output and "--restart" in other_budget.output

    restarted = cli_train(tiny_work, "-f", "0", "--epochs", "1", "--restart", *SHORT)
    assert restarted.exit_code == 0, restarted.output
    assert [r["epoch"] for r in read_log(out / "log.jsonl")] == [0]
    assert load_checkpoint(out / CHECKPOINT_FINAL)["train_config"]["epochs"] == 1


def test_missing_preprocessed_data_is_a_clear_error(tiny_work: Path) -> None:
    import shutil

    shutil.rmtree(tiny_work / "preprocessed")
    result = cli_train(tiny_work, "-f", "0", "--epochs", "1", *SHORT)
    assert result.exit_code == 1
    assert "selfunet preprocess" in result.output


def test_trainer_removes_a_dead_writers_temp_files_and_never_a_live_ones(tiny_work: Path) -> None:
    out = fold_dir(tiny_work)
    out.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # this process has exited: its temp files are leftovers
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = [out / f".checkpoint_best.pt.{dead_pid}.0123abcd.tmp",
                 out / f".progress.png.{dead_pid}.89abcdef.tmp.png"]
        kept = out / f".checkpoint_latest.pt.{live.pid}.0123abcd.tmp"  # another live writer's (e.g. an export)
        for path in (*stale, kept):
            path.write_bytes(b"half written")
        assert cli_train(tiny_work, "-f", "0", "--epochs", "1", *SHORT).exit_code == 0
        assert not any(p.exists() for p in stale)
        assert kept.read_bytes() == b"half written"
    finally:
        live.kill()
        live.wait()


def dice(prediction, reference, label: int) -> float:
    p, r = prediction == label, reference == label
    return float(2 * (p & r).sum() / max(p.sum() + r.sum(), 1))


@pytest.mark.slow
def test_short_training_learns_the_organ(tiny_work: Path, demo_root: Path) -> None:
    """CI-sized sanity check (the real-plan Dice is measured by bench/bench_train.py demo-dice):
    the loss falls and the out-of-fold predictions find the organ well above chance."""
    import SimpleITK as sitk

    result = cli_train(tiny_work, "-f", "0", "--epochs", "4", "--iterations-per-epoch", "10",
                       "--validation-iterations", "2", "--device", "cpu", "--predict-validation")
    assert result.exit_code == 0, result.output
    out = fold_dir(tiny_work)
    losses = [r["train_loss"] for r in read_log(out / "log.jsonl")]
    assert losses[-1] < losses[0] - 0.2
    cases = json.loads((out / "training_summary.json").read_text())["validation_cases"]
    organ = []
    for case in cases:
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "validation" / f"{case}.nii.gz")))
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_root / "labelsTr" / f"{case}.nii.gz")))
        organ.append(dice(prediction, reference, 1))
    assert min(organ) > 0.3, organ


def test_fp16_trains_with_a_gradient_scaler(tiny_work: Path) -> None:
    """The scaler path of the trainer, for real on the CPU: fp16 autocast scales the loss and the
    scaler's state is checkpointed (fp32 has none: see the --amp off test above)."""
    result = cli_train(tiny_work, "-f", "0", "--epochs", "1", "--amp", "fp16", *SHORT)
    assert result.exit_code == 0, result.output
    out = fold_dir(tiny_work)
    scaler = load_checkpoint(out / CHECKPOINT_FINAL)["grad_scaler"]
    # every step went through the scaler: clean steps grow its tracker, an overflow lowers the scale
    assert scaler["_growth_tracker"] > 0 or scaler["scale"] < 2.0**16
    assert json.loads((out / "training_summary.json").read_text())["amp"] == "torch.float16"
    assert all(math.isfinite(r["train_loss"]) for r in read_log(out / "log.jsonl"))


def test_config_options_reach_the_trainer_and_a_resume_keeps_them(tiny_work: Path) -> None:
    options = ["--momentum", "0.9", "--weight-decay", "0.001", "--aug-p-rotation", "0", "--aug-scale-range", "0.9",
               "1.1", "--oversample-foreground", "1.0", "--split-seed", "3"]
    result = cli_train(tiny_work, "-f", "0", "--epochs", "2", "--checkpoint-every", "1", *options, *SHORT)
    assert result.exit_code == 0, result.output
    out = fold_dir(tiny_work)
    payload = load_checkpoint(out / CHECKPOINT_FINAL)
    group = payload["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.9 and group["weight_decay"] == 0.001  # in the optimizer, not only the config
    saved = payload["train_config"]
    assert saved["augmentation"]["p_rotation"] == 0 and saved["augmentation"]["scale_range"] == [0.9, 1.1]
    assert saved["oversample_foreground"] == 1.0 and saved["split_seed"] == 3

    # a resume without the options continues with the checkpoint's settings, not the defaults
    (out / CHECKPOINT_FINAL).unlink()
    resumed = cli_train(tiny_work, "-f", "0", "--resume", *SHORT)
    assert resumed.exit_code == 0, resumed.output
    again = load_checkpoint(out / CHECKPOINT_FINAL)["train_config"]
    assert again["momentum"] == 0.9 and again["epochs"] == 2 and again["augmentation"]["scale_range"] == [0.9, 1.1]

    # and refuses an option that would change what it computes, naming it
    (out / CHECKPOINT_FINAL).unlink()
    changed = cli_train(tiny_work, "-f", "0", "--resume", "--aug-p-rotation", "0.5", *SHORT)
    assert changed.exit_code == 1
    assert "augmentation.p_rotation=0.0 (now 0.5)" in changed.output and "--restart" in changed.output
