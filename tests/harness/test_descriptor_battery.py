"""A battery of broken task descriptors through the real command line (`harness validate`, `harness run`).

Every case is a file written by the test; each must end in exit code 1 (or 2 for a bad option),
no traceback, and one message that names the file, the key and the fix. The cases here are the
ones tests/harness/test_tasks.py does not cover: bytes that are not UTF-8, YAML aliases (the
"billion laughs"), rich markup in keys and values, huge keys and values, nesting, duplicate keys,
folds against the number of cases, and wrong types in every section.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app

GOOD = "name: fake\ndataset: ../data/Task99_Fake\n"
BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
) + "\n" + GOOD


def dataset_with(root: Path, cases: int) -> Path:
    """A dataset.json with ``cases`` training entries (the files are not needed to count folds)."""
    folder = root / "data" / "Task99_Fake"
    folder.mkdir(parents=True, exist_ok=True)
    training = [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"} for i in range(cases)]
    (folder / "dataset.json").write_text(json.dumps({
        "name": "fake", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "x"}, "numTraining": cases,
        "training": training, "test": []}))
    return folder


# (id, file content (str or bytes), words the message must hold (the key/problem and the fix))
CASES: list[tuple[str, str | bytes, list[str]]] = [
    ("latin1-bytes", GOOD.encode() + "description: caf\xe9\n".encode("latin-1"),
     ["not UTF-8 text", "line 3", "save the file as UTF-8"]),
    ("binary-garbage", b"\xff\xfe\x00\x01" * 40, ["not UTF-8 text", "save the file as UTF-8"]),
    ("billion-laughs", BILLION_LAUGHS, ["aliases are not allowed", "include:"]),
    ("one-alias", "seed: &s 3\n" + GOOD + "gpu_memory_gb: *s\n", ["alias *s", "aliases are not allowed"]),
    ("duplicate-key", GOOD + "seed: 1\nseed: 2\n", ["key 'seed'", "twice", "line 3", "line 4", "keep one"]),
    ("duplicate-nested-key", GOOD + "metrics:\n  hd95: true\n  hd95: false\n",
     ["key 'hd95'", "twice", "keep one"]),
    ("markup-key", GOOD + "'[/x]': 1\n", ["key '[/x]'", "unknown key", "remove it"]),
    ("markup-name", "name: '[bold red]x[/]'\ndataset: ../data/Task99_Fake\n",
     ["key 'name'", "[bold red]x[/]", "fix the value"]),
    ("huge-key", GOOD + "? " + "k" * 100_000 + "\n: 1\n", ["unknown key", "characters)", "remove it"]),
    ("huge-value", GOOD + "seed: '" + "9" * 100_000 + "'\n", ["key 'seed'", "characters)", "fix the value"]),
    ("too-big-file", GOOD + "# " + "x" * 300_000 + "\n", ["too big for a task descriptor", "right file"]),
    ("deep-nesting", GOOD + "metrics: " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply"]),
    ("tab-indent", GOOD + "metrics:\n\thd95: true\n", ["not valid YAML at line", "fix the syntax"]),
    ("folds-one", GOOD + "folds: 1\n", ["key 'folds'", "greater than or equal to 2", "fix the value"]),
    ("folds-over-cases", GOOD + "folds: 7\n", ["key 'folds': 7 folds", "only 4 training cases",
                                              "set `folds:` between 2 and 4"]),
    ("preset-folds-over-cases", GOOD, ["key 'folds': not set, so the budget preset 'full' gives 5 folds",
                                       "only 4 training cases", "between 2 and 4"]),
    ("empty-dataset", "name: fake\ndataset: ''\n", ["key 'dataset'", "empty", "set it to the dataset folder"]),
    ("nul-in-dataset", 'name: fake\ndataset: "a\\0b"\n', ["key 'dataset'", "not a usable path"]),
    # a number is an nnU-Net dataset id: looked up under nnUNet_raw, which the tests leave unset
    ("dataset-id-unset-raw", "name: fake\ndataset: 12\n",
     ["key 'dataset'", "does not exist", "Dataset012_*", "nnUNet_raw is not set", "--nnunet-raw DIR"]),
    ("dataset-list", "name: fake\ndataset: [1, 2]\n", ["key 'dataset'", "fix the value"]),
    ("name-number", "name: 12\ndataset: ../data/Task99_Fake\n", ["key 'name'", "valid string", "fix the value"]),
    ("epochs-zero", GOOD + "budget:\n  preset: ci\n  epochs: 0\n", ["key 'budget.epochs'", "greater than or equal"]),
    ("validation-negative", GOOD + "budget:\n  preset: ci\n  validation_iterations: -1\n",
     ["key 'budget.validation_iterations'", "greater than or equal to 0"]),
    ("cpus-zero", GOOD + "resources:\n  cpus: 0\n", ["key 'resources.cpus'", "greater than or equal to 1"]),
    ("memory-negative", GOOD + "resources:\n  memory_gb: -2\n", ["key 'resources.memory_gb'", "greater than 0"]),
    ("demo-one-case", "name: d\ndataset: ../data/new\ndemo:\n  cases: 1\n",
     ["key 'demo.cases'", "greater than or equal to 2"]),
    ("nsd-negative", GOOD + "metrics:\n  nsd_tolerance_mm: -1\n", ["key 'metrics.nsd_tolerance_mm'", "greater than 0"]),
    ("configurations-empty", GOOD + "configurations: []\n",
     ["key 'configurations'", "empty list", "leave the key out"]),
    ("configurations-string", GOOD + "configurations: 3d_fullres\n", ["key 'configurations'", "valid list"]),
    ("seed-float", GOOD + "seed: 1.5\n", ["key 'seed'", "valid integer"]),
    ("gpu-memory-text", GOOD + "gpu_memory_gb: lots\n", ["key 'gpu_memory_gb'", "valid number"]),
    ("integer-key", GOOD + "1: x\n", ["key 1", "keys are names", "rename or remove it"]),
    ("scalar-file", "42\n", ["must be a mapping of keys"]),
]


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    dataset_with(tmp_path, cases=4)
    (tmp_path / "tasks").mkdir()
    return tmp_path / "tasks"


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args), terminal_width=400)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.mark.parametrize(("content", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_descriptor_is_one_clean_message(tasks_dir: Path, content: str | bytes, words: list[str]) -> None:
    path = tasks_dir / "broken.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for command in (["validate", str(path), "-p", "1"], ["run", str(path), "--work-root", str(tasks_dir / "w"),
                                                          "--results", str(tasks_dir / "r")]):
        result = invoke(*command)
        assert result.exit_code == 1, result.output
        assert str(path) in result.output
        for word in words:
            assert word in result.output, (word, result.output[:3000])
        assert len(result.output) < 5000  # a huge key or value is quoted, not dumped
        assert not (tasks_dir / "w" / "fake" / ".harness").exists()  # nothing ran


def test_broken_base_file_is_named_not_the_including_one(tasks_dir: Path) -> None:
    (tasks_dir / "_base").mkdir()
    (tasks_dir / "_base" / "base.yaml").write_bytes(b"seed: \xff\n")
    (tasks_dir / "t.yaml").write_text("include: _base/base.yaml\n" + GOOD)
    result = invoke("validate", str(tasks_dir), "-p", "1")
    assert result.exit_code == 1
    assert f"{tasks_dir / '_base' / 'base.yaml'}: not UTF-8 text" in result.output


@pytest.mark.parametrize(("option", "value"), [("--budget", "huge"), ("--executor", "k8s"), ("--sandbox", "vm")])
def test_closed_sets_are_choices_checked_when_parsing(tasks_dir: Path, option: str, value: str) -> None:
    path = tasks_dir / "ok.yaml"
    path.write_text(GOOD + "folds: 2\n")
    result = invoke("run", str(path), option, value, "--work-root", str(tasks_dir / "w"))
    assert result.exit_code == 2
    assert value in result.output and option in result.output
    assert not (tasks_dir / "w").exists()


def test_budget_that_overrides_descriptor_folds_says_so(tmp_path: Path) -> None:
    """The rule (docs/reference/task-descriptors.md): --budget replaces budget and folds, and says so for each task."""
    dataset_with(tmp_path, cases=1)  # 1 case: the run then stops at the folds check, before any job
    (tmp_path / "tasks").mkdir()
    path = tmp_path / "tasks" / "t.yaml"
    path.write_text(GOOD + "folds: 3\nbudget:\n  preset: full\n  epochs: 7\n")
    result = invoke("run", str(path), "--budget", "ci", "--work-root", str(tmp_path / "w"),
                    "--results", str(tmp_path / "r"))
    assert result.exit_code == 1
    assert f"note: task fake ({path}): --budget ci replaces the descriptor's budget 'full' (7 x 250) -> 'ci' " \
           "(3 x 12) and folds 3 (from its `folds`) -> 2 (--budget replaces budget and folds; " \
           "docs/reference/task-descriptors.md)" \
           in result.output
    assert "has 1 training case(s); cross-validation needs at least 2: add training cases" in result.output
