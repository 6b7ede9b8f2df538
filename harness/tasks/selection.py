"""Which descriptors a command means: files, folders or task names, with the command line's
``--data-root``, ``--budget``, ``--tasks-root`` and ``--nnunet-raw`` applied (one place, so every
``harness`` command accepts and refuses the same)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.tasks.descriptor import TaskDescriptor, load_tasks
from selfunet.errors import SelfUNetError


def load_selected(paths: list[Path] | None, data_root: Path | None = None, budget: str | None = None,
                  tasks_root: Path | None = None, nnunet_raw: Path | None = None,
                  note: Callable[[str], None] | None = None) -> list[TaskDescriptor]:
    """The tasks under ``paths`` (default ``tasks/``); what ``--budget`` overrides is told to ``note``
    (the rule in docs/reference/task-descriptors.md is printed, never applied silently)."""
    tasks = load_tasks(paths or None, root=tasks_root, nnunet_raw=nnunet_raw)
    if data_root is not None:
        tasks = [t.with_data_root(data_root) for t in tasks]
    if budget is not None:
        for t in tasks:
            text = t.budget_override_note(budget)
            if text and note is not None:
                note(text)
        tasks = [t.with_budget(budget) for t in tasks]
    return tasks


def find_task(task: str, tasks_dir: Path, data_root: Path | None = None, tasks_root: Path | None = None,
              nnunet_raw: Path | None = None) -> TaskDescriptor:
    """A descriptor file, or a task name looked up under ``tasks_dir``."""
    path = Path(task)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_selected([path], data_root, tasks_root=tasks_root, nnunet_raw=nnunet_raw)[0]
    candidates = load_selected([tasks_dir], data_root, tasks_root=tasks_root, nnunet_raw=nnunet_raw)
    found = [t for t in candidates if t.name == task]
    if not found:
        known = ", ".join(t.name for t in candidates) or "none"
        raise SelfUNetError(f"task '{task}': not found under {tasks_dir} (tasks: {known}); pass its descriptor file "
                            "or --tasks DIR.")
    return found[0]


def select_named(names: list[str], tasks_dir: Path, data_root: Path | None = None, tasks_root: Path | None = None,
                 nnunet_raw: Path | None = None) -> list[TaskDescriptor]:
    """Task names (looked up under ``tasks_dir``), descriptor files and folders of them, each task once."""
    found: dict[str, TaskDescriptor] = {}
    for name in names:
        for task in (load_selected([Path(name)], data_root, tasks_root=tasks_root, nnunet_raw=nnunet_raw)
                     if Path(name).is_dir() else [find_task(name, tasks_dir, data_root, tasks_root, nnunet_raw)]):
            found.setdefault(task.name, task)
    return list(found.values())
