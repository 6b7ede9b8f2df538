"""State you can trust, with real processes: one writer per folder (flock, holder named), stop
requests answered within one step, a full disk reported as such with nothing finished lost, and
the closed sets of both command lines checked when they are parsed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app as harness_app
from selfunet.cli import app as selfunet_app
from selfunet.locks import WORK_LOCK, exclusive
from selfunet.runtime import load_checkpoint

PY = sys.executable


def hold(folder: Path, name: str) -> subprocess.Popen:
    """A real process holding ``folder/name`` (as any writer would); returns once it holds it."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from selfunet.locks import exclusive
        with exclusive(Path({str(folder)!r}), {name!r}, "the test's folder"):
            print("held", flush=True)
            time.sleep(120)
    """)
    process = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def wait_for(condition, process: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended (rc {process.returncode}) before the awaited state"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# -- one writer per folder ------------------------------------------------------------------------
def test_second_selfunet_run_exits_naming_the_holder_and_a_killed_holder_frees_it(demo_root: Path,
                                                                                   tmp_path: Path) -> None:
    work = tmp_path / "work"
    first = subprocess.Popen([PY, "-m", "selfunet.cli", "run", str(demo_root), "--work", str(work), "--budget", "ci",
                              "-p", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: f'"pid": {first.pid}' in _read(work / WORK_LOCK), first)
        second = CliRunner().invoke(selfunet_app, ["run", str(demo_root), "--work", str(work), "--budget", "ci"])
        no_traceback(second)
        assert second.exit_code == 1
        assert f"{work} is in use" in second.output
        assert f"pid {first.pid} on host {socket.gethostname()} since " in second.output
        os.kill(first.pid, signal.SIGKILL)  # no cleanup at all: the kernel drops the lock with the process
        first.wait(timeout=30)
        with exclusive(work, WORK_LOCK):
            pass
    finally:
        if first.poll() is None:
            first.kill()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_second_trainer_of_a_fold_exits_naming_the_holder(tiny_work: Path) -> None:
    holder = hold(tiny_work / "train" / "3d_fullres", ".fold_0.lock")
    try:
        result = CliRunner().invoke(selfunet_app, ["train", str(tiny_work), "-c", "3d_fullres", "-f", "0",
                                                   "--epochs", "1", "--iterations-per-epoch", "1", "--device", "cpu"])
        no_traceback(result)
        assert result.exit_code == 1
        assert "training of 3d_fullres fold 0 is being written by pid" in result.output
        assert f"pid {holder.pid} on host" in result.output
        assert not (tiny_work / "train" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("root", ["results", "work"])
def test_second_harness_run_exits_naming_the_holder(tmp_path: Path, demo_root: Path, root: str) -> None:
    task = tmp_path / "t.yaml"
    task.write_text(f"name: t\ndataset: {demo_root}\nfolds: 2\n")
    lock = {"results": ".harness-results.lock", "work": ".harness-work.lock"}[root]
    holder = hold(tmp_path / root, lock)
    try:
        result = CliRunner().invoke(harness_app, ["run", str(task), "--results", str(tmp_path / "results"),
                                                  "--work-root", str(tmp_path / "work")], terminal_width=300)
        no_traceback(result)
        assert result.exit_code == 1
        assert f"{tmp_path / root} is in use" in result.output and f"pid {holder.pid}" in result.output
        assert not (tmp_path / "work" / "t" / ".harness").exists()  # no job ran
    finally:
        holder.kill()
        holder.wait()


# -- stop requests --------------------------------------------------------------------------------
def test_sigterm_during_validation_is_answered_within_one_batch(tiny_work: Path) -> None:
    """Before: a stop request waited for every validation batch of the epoch (50, over a minute on a CPU)."""
    out = tiny_work / "train" / "3d_fullres" / "fold_0"
    command = [PY, "-m", "selfunet.cli", "-v", "train", str(tiny_work), "-c", "3d_fullres", "-f", "0", "--epochs", "2",
               "--iterations-per-epoch", "1", "--validation-iterations", "100000", "--no-predict-validation",
               "--device", "cpu"]
    log = tiny_work / "train.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "validating: 100000 batches" in _read(log), process)
            time.sleep(0.5)
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            took = time.monotonic() - sent
        finally:
            if process.poll() is None:
                process.kill()
    text = log.read_text()
    assert process.returncode == 1, text
    assert "stopped by signal 15 (SIGTERM) at epoch 0, iteration 1" in text and "--resume" in text
    assert took < 30, f"the stop took {took:.1f} s"  # one batch plus a checkpoint, on a loaded machine
    saved = load_checkpoint(out / "checkpoint_latest.pt")
    assert (saved["epoch"], saved["iteration"]) == (0, 1)  # the epoch's iterations are kept, not redone
    resumed = subprocess.run([*command[:10], "--epochs", "2", "--iterations-per-epoch", "1",
                              "--validation-iterations", "1", "--no-predict-validation", "--device", "cpu", "--resume"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 0, iteration 1" in resumed.stderr
    assert load_checkpoint(out / "checkpoint_final.pt")["epoch"] == 2


def test_stop_signal_is_answered_inside_a_sliding_window_prediction() -> None:
    import torch

    from selfunet.inference.sliding_window import InferenceConfig, predict_sliding_window
    from selfunet.runtime import StopRequested, stop_on_signals, stop_requested

    network = torch.nn.Conv3d(1, 2, 1)
    image = torch.zeros(1, 8, 32, 32)
    with stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal through the real handler: only a flag is set
        assert stop_requested() == signal.SIGTERM
        with pytest.raises(StopRequested, match="stopped by SIGTERM during a sliding-window prediction"):
            predict_sliding_window(network, image, [8, 16, 16], 2, InferenceConfig(mirror_axes=()))
    assert stop_requested() is None  # the flag does not outlive the block
    predict_sliding_window(network, image, [8, 16, 16], 2, InferenceConfig(mirror_axes=()))


# -- a full disk ------------------------------------------------------------------------------------
VERIFY = """
import sys
from pathlib import Path
import SimpleITK as sitk
root = Path(sys.argv[1])
files = sorted(p for p in root.rglob("*") if p.is_file())
temps = [p.name for p in files if ".tmp" in p.name]
assert not temps, f"temp files left: {temps}"
images = [p for p in files if p.name.endswith(".nii.gz")]
for p in images:
    sitk.ReadImage(str(p))  # every image that exists is complete
print(f"verified {len(images)} complete image(s)")
"""


def on_tiny_disk(tmp_path: Path, size_kb: int, *commands: str) -> subprocess.CompletedProcess:
    """Run shell ``commands`` with a ``size_kb`` tmpfs mounted at ``tmp_path/disk`` (a private mount
    namespace: nothing to unmount afterwards); skips where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "verify.py").write_text(VERIFY)
    script = f"mount -t tmpfs -o size={size_kb}k tmpfs {disk} || exit 99\n" + "\n".join(commands)
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    flags = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([unshare, *flags, "sh", "-c", script], capture_output=True, text=True, timeout=900,
                            env=env)
    if result.returncode == 99 or "unshare failed" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()[:200]}")
    return result


def test_full_disk_names_the_path_exits_1_and_keeps_what_was_finished(tmp_path: Path) -> None:
    out = tmp_path / "disk" / "demo"
    result = on_tiny_disk(
        tmp_path, 400,
        f"{PY} -m selfunet.cli demo-data {out} --cases 40 --test-cases 0; echo rc=$?",
        f"{PY} {tmp_path / 'verify.py'} {out}",
    )
    output = result.stdout + result.stderr
    assert "rc=1" in output, output
    assert "Traceback" not in output
    assert "no space left on the device" in output and str(out) in output
    assert "free some space" in output and "finished results are kept" in output
    assert "verified" in output and "complete image(s)" in output, output
    assert int(output.split("verified ")[1].split()[0]) > 0  # some cases were written before the disk filled


def test_full_disk_in_a_harness_job_is_a_clean_failure(tmp_path: Path) -> None:
    task = tmp_path / "t.yaml"
    task.write_text(f"name: t\ndataset: {tmp_path / 'disk' / 'demo'}\ndemo:\n  cases: 40\n  test_cases: 0\nfolds: 2\n")
    result = on_tiny_disk(
        tmp_path, 400,
        f"{PY} -m harness.cli run {task} --work-root {tmp_path / 'work'} --results {tmp_path / 'results'}; "
        "echo rc=$?",
    )
    output = result.stdout + result.stderr
    assert "rc=1" in output, output
    assert "Traceback" not in output
    assert "t/demo-data failed" in output and "no space left on the device" in output


# -- closed sets are parse-time choices ------------------------------------------------------------
@pytest.mark.parametrize(("args", "bad"), [
    (["train", "W", "-c", "3d_fullres", "-f", "0", "--device", "gpu"], "gpu"),
    (["train", "W", "-c", "3d_fullres", "-f", "0", "--amp", "fp8"], "fp8"),
    (["train", "W", "-c", "3d_fullres", "-f", "0", "--num-folds", "1"], "--num-folds"),
    (["run", "D", "--work", "W", "--device", "cuda:x"], "cuda:x"),
    (["run", "D", "--work", "W", "--budget", "huge"], "huge"),
    (["run", "D", "--work", "W", "--amp", "on"], "on"),
    (["predict", "I", "-o", "O", "-w", "W", "--device", "tpu"], "tpu"),
    (["demo", "W", "--budget", "tiny"], "tiny"),
])
def test_selfunet_closed_sets_fail_at_parse_time(tmp_path: Path, args: list[str], bad: str) -> None:
    args = [str(tmp_path / a) if a in ("W", "D", "I", "O") else a for a in args]
    result = CliRunner().invoke(selfunet_app, args)
    no_traceback(result)
    assert result.exit_code == 2, result.output
    assert bad in result.output
    assert not any(tmp_path.iterdir())  # nothing started


def test_torn_final_checkpoint_is_set_aside_and_training_resumes(tiny_work: Path) -> None:
    out = tiny_work / "train" / "3d_fullres" / "fold_0"
    args = ["train", str(tiny_work), "-c", "3d_fullres", "-f", "0", "--epochs", "1", "--iterations-per-epoch", "2",
            "--validation-iterations", "1", "--no-predict-validation", "--device", "cpu", "--checkpoint-every", "1"]
    assert CliRunner().invoke(selfunet_app, args).exit_code == 0
    final = out / "checkpoint_final.pt"
    final.write_bytes(final.read_bytes()[:1000])  # what a full disk used to leave
    result = CliRunner().invoke(selfunet_app, [*args, "--resume"])
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(final)["epoch"] == 1
    assert len(list(out.glob("checkpoint_final.pt.invalid-*"))) == 1


def test_a_bug_is_one_line_and_verbose_shows_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import selfunet.data.demo

    def broken(*args, **kwargs):
        raise TypeError("[/x] " + "y" * 10_000)

    monkeypatch.setattr(selfunet.data.demo, "make_demo_dataset", broken)
    result = CliRunner().invoke(selfunet_app, ["demo-data", str(tmp_path / "d")])
    no_traceback(result)
    assert result.exit_code == 1
    assert "unexpected TypeError: [/x] yyy" in result.output and "characters)" in result.output
    assert "-v` prints the traceback" in result.output
    verbose = CliRunner().invoke(selfunet_app, ["-v", "demo-data", str(tmp_path / "d")])
    assert isinstance(verbose.exception, TypeError)
