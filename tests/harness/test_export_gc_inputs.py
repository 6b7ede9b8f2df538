"""Values pasted into the grand-challenge build context: checked against strict patterns, then quoted.

Hostile values (shell metacharacters, newlines, paths) are refused before anything is written; the
scripts are run for real by bash with a stand-in ``docker`` that records its arguments, so the
quoting is what bash sees, not what a regex thinks bash sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.challenge.gc_case import read_inputs_json
from harness.challenge.gc_export import export_gc, model_files, write_scripts
from harness.cli import app
from harness.tasks.names import check_image_reference, check_image_tag, check_relative_inside, check_slug
from selfunet.errors import SelfUNetError

HOSTILE = ["x; touch pwned", "$(touch pwned)", "`touch pwned`", "a'b", 'a"b', "a\nb", "../x", "a b", "", "a" * 300,
           "x}}; touch pwned; echo {{"]


@pytest.mark.parametrize("value", [*HOSTILE, "UPPER:latest", "name:", ":tag", "a/../b:latest"])
def test_hostile_tag_refused(value: str) -> None:
    with pytest.raises(SelfUNetError, match=r"--tag .*not allowed; an image tag is NAME"):
        check_image_tag(value)


@pytest.mark.parametrize("value", [*HOSTILE, "Image", "-image", "images/x", "..", "/abs"])
def test_hostile_slug_refused(value: str) -> None:
    with pytest.raises(SelfUNetError, match="not allowed; a socket slug is lower-case"):
        check_slug(value)


@pytest.mark.parametrize("value", ["selfunet:latest", "selfunet-gc-demo:latest",
                                   "registry.example.org:5000/team/algo:v1.2", "a__b/c-d:T_1",
                                   "selfunet@sha256:" + "a" * 64])
def test_ordinary_image_references_pass(value: str) -> None:
    assert check_image_reference(value) == value
    if "@" not in value:
        assert check_image_tag(value) == value


@pytest.mark.parametrize("value", ["images/x", "images/ct-scan", "a/b/c"])
def test_relative_paths_inside_pass(value: str) -> None:
    assert check_relative_inside(value, "relative_path") == value


@pytest.mark.parametrize("value", ["/input/x", "../x", "images/../../x", "..", ""])
def test_relative_paths_outside_refused(value: str) -> None:
    with pytest.raises(SelfUNetError, match="relative_path"):
        check_relative_inside(value, "relative_path")


def test_inputs_json_cannot_move_a_socket_outside_the_case(tmp_path: Path) -> None:
    listing = [{"interface": {"slug": "ct", "kind": "Image", "relative_path": "../../elsewhere"}}]
    (tmp_path / "inputs.json").write_text(json.dumps(listing))
    with pytest.raises(SelfUNetError, match=r"relative_path of socket 'ct'.*points outside"):
        read_inputs_json(tmp_path / "inputs.json")
    listing[0]["interface"] = {"slug": "$(id)", "kind": "Image"}
    (tmp_path / "inputs.json").write_text(json.dumps(listing))
    with pytest.raises(SelfUNetError, match="socket slug '\\$\\(id\\)'"):
        read_inputs_json(tmp_path / "inputs.json")


def fake_docker(tmp_path: Path) -> tuple[dict, Path]:
    """A PATH whose ``docker`` appends its argv (one JSON list per call) to a file; ``image inspect``
    answers a non-root user, as the project image would."""
    bin_dir, record = tmp_path / "bin", tmp_path / "docker-calls.jsonl"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/usr/bin/env python3\nimport json, sys\n"
                                    f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                                    "print('1000:1000' if sys.argv[1:3] == ['image', 'inspect'] else '')\n")
    (bin_dir / "docker").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, record


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_generated_scripts_pass_the_exact_tag_slug_and_base_to_docker(tmp_path: Path) -> None:
    out = tmp_path / "ctx"
    (out / "test" / "input").mkdir(parents=True)
    tag, slug, base = "registry.example.org:5000/team/algo-1:v1.2", "liver-ct_seg", "selfunet:0.1-gabc"
    write_scripts(out, tag, slug, base)
    env, record = fake_docker(tmp_path)
    for script in ("do_build.sh", "do_test_run.sh", "do_save.sh"):
        assert subprocess.run(["bash", "-n", str(out / script)]).returncode == 0
        result = subprocess.run([str(out / script)], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, (script, result.stderr)
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert calls[0][:2] == ["image", "inspect"] and calls[0][-1] == base
    assert calls[1] == ["build", "--platform", "linux/amd64", "--network", "none", "-t", tag, "."]
    assert calls[2][:2] == ["run", "--rm"] and calls[2][-1] == tag
    assert calls[3] == ["save", tag]
    assert (out / "registry.example.org_5000_team_algo-1_v1.2.tar.gz").is_file()
    # a tag given on the script's command line passes through as one argument, too
    subprocess.run([str(out / "do_build.sh"), "other:tag"], env=env, check=True, capture_output=True)
    assert json.loads(record.read_text().splitlines()[-1])[-2] == "other:tag"
    assert not (tmp_path / "pwned").exists() and not (out / "pwned").exists()


@pytest.mark.parametrize(("tag", "slug", "base"), [("x; touch pwned", "seg", "selfunet:latest"),
                                                   ("ok:tag", "a'; touch pwned; '", "selfunet:latest"),
                                                   ("ok:tag", "seg", 'selfunet:latest"; touch pwned; "')])
def test_write_scripts_refuses_hostile_values(tmp_path: Path, tag: str, slug: str, base: str) -> None:
    with pytest.raises(SelfUNetError, match="not allowed"):
        write_scripts(tmp_path, tag, slug, base)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad", [{"tag": "x; touch pwned"}, {"tag": "$(touch pwned):latest"},
                                 {"input_slugs": ["../../etc"]}, {"output_slug": "a'; touch pwned; '"},
                                 {"image": "selfunet:latest\nRUN touch /pwned"}])
def test_export_refuses_hostile_values_before_writing_anything(tmp_path: Path, bad: dict) -> None:
    out = tmp_path / "gc"
    with pytest.raises(SelfUNetError, match="not allowed"):
        export_gc(tmp_path / "no-such-work", out, **bad)
    assert not out.exists()


def test_cli_export_gc_hostile_tag_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "gc", str(tmp_path), "--out", str(tmp_path / "gc"),
                                      "--tag", "$(touch pwned)"], terminal_width=300)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "--tag" in result.output and "not allowed" in result.output
    assert not (tmp_path / "gc").exists()


@pytest.mark.parametrize("member", ["3d_fullres\nRUN touch /pwned", "../../../etc", "a b"])
def test_job_written_selection_cannot_inject_configuration_names(tiny_work_template: Path, tmp_path: Path,
                                                                  member: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tiny_work_template / "plan.json", work / "plan.json")
    (work / "selection.json").write_text(json.dumps({
        "selected": member, "members": [member], "postprocessing": {}, "candidates": [], "labels": {},
        "file_ending": ".nii.gz", "num_cases": 0}))
    with pytest.raises(SelfUNetError, match=r"selection.json: 'selected' .*not allowed; a configuration name"):
        model_files(work)


def test_test_case_comes_from_the_named_dataset_not_from_the_job_written_fingerprint(
        tiny_work_template: Path, demo_root: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for name in ("plan.json", "fingerprint.json"):
        shutil.copy(tiny_work_template / name, work / name)
    assert json.loads((work / "fingerprint.json").read_text())["dataset"]["root"] == str(demo_root.resolve())
    (work / "train" / "3d_fullres" / "fold_0").mkdir(parents=True)
    (work / "train" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").write_bytes(b"weights")
    (work / "selection.json").write_text(json.dumps({
        "selected": "3d_fullres", "members": ["3d_fullres"], "postprocessing": {}, "candidates": [], "labels": {},
        "file_ending": ".nii.gz", "num_cases": 0}))
    context = export_gc(work, tmp_path / "gc")
    assert (context / "model" / "train" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").is_file()
    assert not (context / "test").exists()  # fingerprint.json names a dataset, but a job wrote it
    context = export_gc(work, tmp_path / "gc", dataset=demo_root)
    assert (context / "test" / "input" / "inputs.json").is_file()
