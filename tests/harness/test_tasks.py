"""Task descriptors: a battery of broken files (each with its message), includes, discovery, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.tasks.descriptor import dataset_problem, discover, load_task, load_tasks
from selfunet.errors import SelfUNetError

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A folder that looks like a dataset to the descriptor loader (dataset.json present)."""
    root = tmp_path / "data" / "Task99_Fake"
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"name": "fake"}))
    return root


def good(extra: str = "") -> str:
    return "name: fake\ndataset: ../data/Task99_Fake\n" + extra


def load_error(path: Path) -> str:
    with pytest.raises(SelfUNetError) as info:
        load_task(path)
    return str(info.value)


def test_minimal_descriptor_defaults_and_relative_dataset(tmp_path: Path, dataset: Path) -> None:
    task = load_task(write(tmp_path / "tasks" / "fake.yaml", good()))
    assert task.dataset == dataset.resolve()
    assert task.budget.preset == "full" and task.num_folds == 5
    assert task.configurations is None and task.metrics.hd95 is False
    assert task.planners == ["default"]
    assert load_task(write(tmp_path / "tasks" / "p.yaml", good("planners: [default, resenc-m, resenc-l]\n"))).planners \
        == ["default", "resenc-m", "resenc-l"]
    assert task.export_folder == "Task99_Fake"
    assert dataset_problem(task) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (good("flods: 3\n"), "key 'flods': unknown key; did you mean 'folds'?"),
        (good("metrics:\n  hd59: true\n"), "key 'metrics.hd59': unknown key; did you mean 'metrics.hd95'?"),
        (good("budget:\n  epoch: 3\n"), "key 'budget.epoch': unknown key; did you mean 'budget.epochs'?"),
        (good("zzzzz: 1\n"), "key 'zzzzz': unknown key; remove it; known keys here:"),
        (good("folds: 0\n"), "key 'folds': Input should be greater than or equal to 2"),
        (good("folds: three\n"), "key 'folds': Input should be a valid integer"),
        (good("gpu_memory_gb: -1\n"), "key 'gpu_memory_gb': Input should be greater than 0"),
        (good("budget: huge\n"), "unknown budget preset 'huge'; choose one of full, ci"),
        (good("configurations: [3d_fulres]\n"), "unknown configuration '3d_fulres'; did you mean '3d_fullres'?"),
        (good("planners: [default, resenc-n]\n"), "unknown planner 'resenc-n'; did you mean 'resenc-m'?"),
        (good("planners: []\n"), "key 'planners': empty list"),
        (good("metrics: [dice]\n"), "key 'metrics': Input should be a valid dictionary"),
        (good("export:\n  format: zip\n"), "key 'export.format': Input should be 'msd' or 'none'"),
        (good("name: has space\n").replace("name: fake\n", ""), "key 'name': String should match pattern"),
        ("dataset: ../data/Task99_Fake\n", "key 'name': required but missing; add `name: ...`"),
        ("- name: fake\n", "a descriptor must be a mapping of keys"),
        ("name: [unclosed\n", "not valid YAML at line"),
    ],
)
def test_broken_descriptor_names_file_key_and_fix(tmp_path: Path, dataset: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "tasks" / "broken.yaml", text)
    message = load_error(path)
    assert str(path) in message
    assert expected in message


def test_all_problems_of_one_file_reported_together(tmp_path: Path, dataset: Path) -> None:
    message = load_error(write(tmp_path / "tasks" / "two.yaml", good("flods: 3\nseed: x\n")))
    assert "'flods'" in message and "'seed'" in message


def test_missing_dataset_folder_names_key_and_fix(tmp_path: Path) -> None:
    task = load_task(write(tmp_path / "tasks" / "fake.yaml", "name: fake\ndataset: ../data/nowhere\n"))
    problem = dataset_problem(task)
    assert problem is not None
    assert "key 'dataset'" in problem and "does not exist" in problem and "--data-root" in problem
    assert str(tmp_path / "tasks" / "fake.yaml") in problem


def test_demo_task_without_data_is_fine_until_generated(tmp_path: Path) -> None:
    task = load_task(write(tmp_path / "tasks" / "demo.yaml", "name: d\ndataset: ../data/demo\ndemo: true\n"))
    assert task.demo is not None and task.demo.cases == 8
    assert dataset_problem(task) is None


def test_include_overrides_and_merges_mappings(tmp_path: Path, dataset: Path) -> None:
    write(tmp_path / "tasks" / "_base" / "base.yaml",
          "folds: 3\nseed: 7\nmetrics:\n  nsd_tolerance_mm: 2.0\n  hd95: false\nbudget: ci\n")
    task = load_task(write(tmp_path / "tasks" / "t.yaml",
                           "include: _base/base.yaml\n" + good("seed: 9\nmetrics:\n  hd95: true\n")))
    assert task.folds == 3  # from the base
    assert task.seed == 9  # the including file wins
    assert task.metrics.hd95 is True and task.metrics.nsd_tolerance_mm == 2.0  # merged key by key
    assert task.budget.preset == "ci"


def test_nested_includes_and_dataset_relative_to_the_file_that_names_it(tmp_path: Path, dataset: Path) -> None:
    write(tmp_path / "bases" / "deep.yaml", "dataset: ../data/Task99_Fake\nfolds: 4\n")
    write(tmp_path / "tasks" / "_base" / "mid.yaml", "include: ../../bases/deep.yaml\nseed: 3\n")
    descriptor = write(tmp_path / "tasks" / "t.yaml", "include: [_base/mid.yaml]\nname: t\n")
    # bases/ lies outside the tasks folder: allowed only with a tasks root that holds both
    assert "outside the tasks root" in load_error(descriptor)
    task = load_task(descriptor, root=tmp_path)
    assert task.dataset == dataset.resolve()
    assert (task.folds, task.seed) == (4, 3)


def test_include_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "tasks" / "a.yaml", "include: b.yaml\nname: a\n")
    write(tmp_path / "tasks" / "b.yaml", "include: a.yaml\n")
    message = load_error(tmp_path / "tasks" / "a.yaml")
    assert "include cycle" in message and "a.yaml -> " in message and "key 'include'" in message


def test_missing_include_names_the_including_file(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "tasks" / "t.yaml", "include: _base/nope.yaml\nname: t\n"))
    assert "nope.yaml: descriptor not found (included from" in message and "t.yaml" in message


def test_include_of_wrong_type_is_an_error(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "tasks" / "t.yaml", "include: 3\nname: t\n"))
    assert "key 'include': expected a file path or a list of file paths" in message


def test_discovery_is_sorted_recursive_and_skips_bases(tmp_path: Path, dataset: Path) -> None:
    root = tmp_path / "tasks"
    for name in ("zeta", "alpha", "sub/mid"):
        write(root / f"{name}.yaml", good().replace("name: fake", f"name: {name.replace('/', '_')}"))
    write(root / "_base" / "base.yaml", "folds: 2\n")
    write(root / "_private.yaml", "folds: 2\n")
    found = [p.relative_to(root).as_posix() for p in discover([root])]
    assert found == ["alpha.yaml", "sub/mid.yaml", "zeta.yaml"]


def test_duplicate_task_names_refused(tmp_path: Path, dataset: Path) -> None:
    write(tmp_path / "tasks" / "a.yaml", good())
    write(tmp_path / "tasks" / "b.yaml", good())
    with pytest.raises(SelfUNetError, match="task 'fake' is also defined in"):
        load_tasks([tmp_path / "tasks"])


def test_budget_override_and_data_root(tmp_path: Path, dataset: Path) -> None:
    task = load_task(write(tmp_path / "tasks" / "t.yaml", good("folds: 5\nbudget:\n  preset: full\n  epochs: 7\n")))
    assert task.train_config().epochs == 7 and task.num_folds == 5
    ci = task.with_budget("ci")
    assert ci.num_folds == 2 and ci.train_config().epochs == 3
    moved = task.with_data_root(tmp_path / "elsewhere")
    assert moved.dataset == (tmp_path / "elsewhere" / "Task99_Fake").resolve()
    with pytest.raises(SelfUNetError, match="unknown preset"):
        task.with_budget("tiny")


def test_training_section_reaches_the_train_config_and_the_train_jobs(tmp_path: Path, dataset: Path) -> None:
    from selfunet.cli_options import train_argv

    plain = load_task(write(tmp_path / "tasks" / "plain.yaml", good()))
    assert "training" not in plain.content()  # older descriptors keep their hash
    task = load_task(write(tmp_path / "tasks" / "t.yaml", good(
        "budget: ci\ntraining:\n  momentum: 0.9\n  oversample_foreground: 0.5\n"
        "  augmentation:\n    p_rotation: 0.0\n    scale_range: [0.8, 1.25]\n")))
    config = task.train_config()
    assert config.momentum == 0.9 and config.oversample_foreground == 0.5 and config.epochs == 3  # over ci
    assert config.augmentation.p_rotation == 0.0 and config.augmentation.scale_range == (0.8, 1.25)
    argv = train_argv(config)
    assert argv[argv.index("--momentum") + 1] == "0.9" and "--aug-p-rotation" in argv
    assert task.content()["training"]["momentum"] == 0.9 and task.digest() != plain.digest()


@pytest.mark.parametrize(("text", "expected"), [
    ("training:\n  momentun: 0.9\n", "momentun"),
    ("training:\n  momentum: 2\n", "momentum"),
    ("training:\n  augmentation:\n    p_rotation: 3\n", "p_rotation"),
    ("training:\n  epochs: 3\n", "budget.epochs"),
])
def test_bad_training_section_names_the_field(tmp_path: Path, dataset: Path, text: str, expected: str) -> None:
    assert expected in load_error(write(tmp_path / "tasks" / "t.yaml", good(text)))


def test_shipped_descriptors_all_load() -> None:
    tasks = load_tasks([REPO / "tasks"])
    names = [t.name for t in tasks]
    assert "demo" in names
    decathlon = [n for n in names if n.startswith("Task")]
    assert decathlon == sorted(decathlon) and len(decathlon) == 10
    hippo = next(t for t in tasks if t.name == "Task04_Hippocampus")
    assert hippo.dataset == (REPO / "data" / "Task04_Hippocampus").resolve()
    assert hippo.num_folds == 5 and hippo.export.format == "msd"


def test_cli_ls_lists_tasks_in_order(tmp_path: Path, dataset: Path) -> None:
    write(tmp_path / "tasks" / "b.yaml", good().replace("name: fake", "name: bravo"))
    write(tmp_path / "tasks" / "a.yaml", good().replace("name: fake", "name: alpha"))
    result = CliRunner().invoke(app, ["ls", str(tmp_path / "tasks")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.output.index("alpha") < result.output.index("bravo")


def test_cli_validate_reports_broken_descriptor(tmp_path: Path, dataset: Path) -> None:
    write(tmp_path / "tasks" / "bad.yaml", good("flods: 2\n"))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "tasks")], terminal_width=300)
    assert result.exit_code == 1
    assert "did you mean 'folds'?" in result.output


def test_cli_validate_runs_dataset_check(tmp_path: Path, demo_root: Path) -> None:
    write(tmp_path / "tasks" / "ok.yaml", f"name: ok\ndataset: {demo_root}\n")
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "tasks"), "-p", "1"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "1 task(s) valid" in result.output
    # a broken dataset: dataset.json present but a training label file gone
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.json").write_text((demo_root / "dataset.json").read_text())
    write(tmp_path / "tasks2" / "b.yaml", f"name: b\ndataset: {broken}\n")
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "tasks2"), "-p", "1"], terminal_width=300)
    assert result.exit_code == 1
    assert "b.yaml: dataset" in result.output
