"""The grand-challenge build context's shell scripts are real ``.sh`` files: a shell parser and
(where installed: ``.ci/setup`` installs it) ShellCheck read them, as templates and as rendered."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.challenge.gc_export import write_scripts
from harness.challenge.gc_templates import SCRIPTS, render_script

TEMPLATES = Path(__file__).resolve().parents[2] / "harness" / "challenge" / "templates"


def test_every_template_is_a_parseable_shell_script() -> None:
    assert sorted(p.name for p in TEMPLATES.glob("*.sh")) == sorted(SCRIPTS)
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(TEMPLATES / script)], capture_output=True, text=True)
        assert result.returncode == 0, (script, result.stderr)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (.ci/setup installs it)")
@pytest.mark.parametrize("tarball", [False, True])
def test_templates_and_rendered_scripts_pass_shellcheck(tmp_path: Path, tarball: bool) -> None:
    write_scripts(tmp_path, "team/algo:v1", "segmentation", "selfunet:latest", model_tarball=tarball)
    paths = [str(TEMPLATES / s) for s in SCRIPTS] + [str(tmp_path / s) for s in SCRIPTS]
    result = subprocess.run(["shellcheck", "--shell=bash", "--severity=warning", *paths],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_a_placeholder_without_a_value_is_an_error_not_a_blank() -> None:
    with pytest.raises(KeyError, match="TAG"):
        render_script("do_build.sh", {"PLATFORM": "linux/amd64", "BASE": "b"})
    rendered = render_script("do_save.sh", {"TAG": "'a:b'", "ARCHIVE": "a_b.tar.gz", "MODEL_TARBALL": "0"})
    assert "@" not in rendered.replace("${EXTRA[@]}", "")
