"""The drop-in CI files (docs/guide/ci/): their script steps run here as the CI runner would run them.

The compare step runs for real against the committed baseline (a copy of it passes; a copy with
one class degraded fails and prints that class's baseline, current value and change). The run
step's command line is parsed by the real `harness` CLI (unknown options fail); running it is
what tests/harness/test_run_demo.py does, which also runs this compare step on its results.
The install steps are not run here (they would reinstall the project and torch).
"""

from __future__ import annotations

import os
import shlex
import shutil
import string
import subprocess
from pathlib import Path

import pytest
import typer.main
import yaml

from harness.cli import app

REPO = Path(__file__).resolve().parents[2]
FILES = {"github": REPO / "docs" / "guide" / "ci" / "github-actions.yml",
         "gitlab": REPO / "docs" / "guide" / "ci" / "gitlab-ci.yml"}


def workflow_steps(kind: str) -> tuple[dict[str, str], list[str]]:
    """(variables, shell scripts in order) of a CI file."""
    data = yaml.safe_load(FILES[kind].read_text())
    if kind == "github":
        job = data["jobs"]["regression"]
        return dict(job["env"]), [s["run"] for s in job["steps"] if "run" in s]
    job = data["selfunet-regression"]
    return dict(job["variables"]), list(job["script"])


def step(kind: str, word: str) -> str:
    found = [s for s in workflow_steps(kind)[1] if word in s]
    assert len(found) == 1, (kind, word, found)
    return found[0]


def run_step(kind: str, script: str, **env: str) -> subprocess.CompletedProcess:
    variables = workflow_steps(kind)[0] | env
    return subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=REPO, env=os.environ | variables,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", sorted(FILES))
def test_every_step_is_there_in_order(kind: str) -> None:
    variables, scripts = workflow_steps(kind)
    text = "\n".join(scripts)
    assert 'pip install "$SELFUNET_PACKAGE"' in text
    assert text.index("pip install") < text.index("harness run") < text.index("harness compare")
    assert variables["BASELINE"] == "results/baselines" and (REPO / variables["BASELINE"] / "demo").is_dir()
    assert (REPO / variables["TASKS"]).is_file()


@pytest.mark.parametrize("kind", sorted(FILES))
def test_the_run_step_is_a_valid_harness_command(kind: str) -> None:
    variables = workflow_steps(kind)[0]
    words = shlex.split(string.Template(step(kind, "harness run")).substitute(variables))
    assert words[:2] == ["harness", "run"] and "--budget" in words and words[words.index("--budget") + 1] == "ci"
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    ctx = command.make_context("run", words[2:])  # raises on an unknown option or a bad value
    assert ctx.params["budget"] == "ci" and ctx.params["results"] == Path(variables["RESULTS"])


@pytest.mark.parametrize("kind", sorted(FILES))
def test_the_compare_step_passes_on_the_baseline_and_fails_on_a_degraded_copy_per_class(kind: str, tmp_path: Path):
    script = step(kind, "harness compare")
    same = tmp_path / "same"
    shutil.copytree(REPO / "results" / "baselines" / "demo", same / "demo")
    ok = run_step(kind, script, RESULTS=str(same))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "dice_organ" in ok.stdout and "dice_lesion" in ok.stdout and "no drop beyond the tolerance" in ok.stdout

    worse = tmp_path / "worse"
    shutil.copytree(REPO / "results" / "baselines" / "demo", worse / "demo")
    board = worse / "demo" / "leaderboard.csv"
    lines = board.read_text().splitlines()
    header = lines[0].split(",")
    for i, line in enumerate(lines[1:], start=1):
        cells = line.split(",")
        if cells[header.index("selected")] == "yes":
            organ = header.index("dice_organ")
            cells[organ] = f"{float(cells[organ]) - 0.1:.6f}"
            lines[i] = ",".join(cells)
    board.write_text("\n".join(lines) + "\n")
    failed = run_step(kind, script, RESULTS=str(worse))
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1, out
    assert "demo dice_organ: dropped 0.9581 -> 0.8581 (-0.1000)" in out
    assert "dice_lesion" in out and "-0.1000" in out  # the table: every class with its change
