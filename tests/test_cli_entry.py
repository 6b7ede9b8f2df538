"""Both command lines answer ``--version``, and ``harness export`` accepts the forms its help names."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from harness.cli import app as harness_app
from selfunet import __version__
from selfunet.cli import app as selfunet_app


@pytest.mark.parametrize(("module", "program"), [("selfunet.cli", "selfunet"), ("harness.cli", "harness")])
def test_version_flag_in_a_real_process(module: str, program: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{program} {__version__}"


def test_export_help_names_forms_that_parse(tmp_path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(harness_app, ["export", "--help"]).output
    assert "harness export task TASK" in help_text and "harness export gc" in help_text
    # every advertised form reaches the task command (which then reports the unknown task cleanly)
    for args in (["export", "nosuchtask"], ["export", "task", "nosuchtask"], ["export", "--zip", "nosuchtask"],
                 ["export", "nosuchtask", "--zip"]):
        result = runner.invoke(harness_app, [*args, "--tasks", str(tmp_path)])
        assert result.exit_code == 1, (args, result.output)
        assert "task 'nosuchtask': not found" in result.output


def test_selfunet_version_does_not_run_a_command() -> None:
    result = CliRunner().invoke(selfunet_app, ["--version", "check"])
    assert result.exit_code == 0 and result.output.strip() == f"selfunet {__version__}"
