"""The results folder: ``results/<task>/`` (selection.json, leaderboard.csv/.md, predictions) and
``results/leaderboard.md`` (one row per task), written when a task settles and re-rendered by
``harness leaderboard`` from what is on disk.

``WORK/selection.json`` and ``WORK/seeds.json`` were written by jobs: they are copied into
``results/<task>/`` as the regular files they are, never through a link (a link is a clean error
naming it; :mod:`harness.results.safe_files`), and ``results/<task>/`` must be a real folder.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

from rich.console import Console

from harness.executors.base import FINISHED_WELL
from harness.results.leaderboard import NA, NOT_TASKS, SELECTED, Leaderboard, build_leaderboard
from harness.results.ranking import consensus, policy_of, rank_scores
from harness.results.safe_files import MAX_JSON_BYTES, plain_folder, read_below
from harness.results.seeds import SEEDS_FILE
from harness.results.tables import consensus_markdown, md_table, ranking_csv, rich_table, short, to_csv, to_markdown
from selfunet.artifacts import atomic_write_bytes, atomic_write_text
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)


def _meta(record: dict | None) -> dict[str, str]:
    if not record:
        return {}
    meta = {}
    if record.get("dataset"):
        meta["dataset"] = str(record["dataset"])
    when = record.get("finished") or record.get("started")
    if when:
        meta["date"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(when)))
    meta["budget"] = budget_text(record)
    if record.get("seeds"):
        meta["seeds"] = ", ".join(f"{k} {v}" for k, v in record["seeds"].items())
    if record.get("code_version"):
        meta["code"] = str(record["code_version"])
    if record.get("environment"):
        from harness.results.environment import describe

        meta["environment"] = describe(record["environment"])
    return meta


def budget_text(record: dict | None) -> str:
    if not record:
        return NA
    preset = ((record.get("descriptor_content") or {}).get("budget") or {}).get("preset", "?")
    cfg = record.get("train_config") or {}
    if "epochs" in cfg:
        shortcuts = "".join([
            f", batch <= {cfg['max_voxels_per_batch']} voxels" if cfg.get("max_voxels_per_batch") else "",
            "" if cfg.get("validation_mirroring", True) else ", no mirroring",
            f", prediction <= {cfg['prediction_max_window_voxels']} window voxels per case (rest background)"
            if cfg.get("prediction_max_window_voxels") else ""])
        return (f"{preset} ({cfg['epochs']} epochs x {cfg.get('iterations_per_epoch', '?')} iterations, "
                f"{cfg.get('num_folds', record.get('folds', '?'))} folds{shortcuts})")
    return str(preset)


def _read_record(task_dir: Path) -> dict | None:
    try:
        return json.loads((task_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def render_task(task: str, results_root: Path, work: Path | None = None, nsd_tolerance_mm: float | None = None,
                hd95: bool | None = None, record: dict | None = None, console: Console | None = None,
                compute: bool = True, processes: int = 1) -> Leaderboard | None:
    """Copy selection.json into results/<task>/ and write leaderboard.csv/.md from what is on disk.

    ``work`` defaults to the one recorded in run.json; the metrics asked default to the recorded
    descriptor's. Returns None (with a warning) when the task has no selection yet.
    """
    out = Path(results_root) / task
    record = record if record is not None else _read_record(out)
    if work is None and record and record.get("work"):
        work = Path(record["work"])
    metrics = ((record or {}).get("descriptor_content") or {}).get("metrics") or {}
    if nsd_tolerance_mm is None:
        nsd_tolerance_mm = metrics.get("nsd_tolerance_mm")
    if hd95 is None:
        hd95 = bool(metrics.get("hd95", False))
    selection = _work_file(work, "selection.json")
    plain_folder(Path(results_root), Path(task), "the task's results")
    if selection is not None:
        atomic_write_bytes(out / "selection.json", selection)
        seeds = _work_file(work, SEEDS_FILE)
        if seeds is not None:  # several seeds: their scores travel with the selection
            atomic_write_bytes(out / SEEDS_FILE, seeds)
    elif not (out / "selection.json").is_file():
        log.warning("task %s: no selection.json in %s or %s; no leaderboard (did `selfunet select` run?).",
                    task, work, out)
        return None
    policy = policy_of((record or {}).get("descriptor_content"))
    board = build_leaderboard(task, work, out / "selection.json", nsd_tolerance_mm, hd95, _meta(record),
                              compute=compute, processes=processes, policy=policy)
    board.test_ranking = rank_scores(task, out / "scores", policy=policy)
    atomic_write_text(out / "leaderboard.csv", to_csv(board))
    atomic_write_text(out / "leaderboard.md", to_markdown(board))
    rankings = {k: v for k, v in (("crossval", board.ranking), ("test", board.test_ranking)) if v is not None}
    if rankings:
        atomic_write_text(out / "ranking.csv", ranking_csv(rankings))
    elif (out / "ranking.csv").is_file():
        (out / "ranking.csv").unlink()
    if console is not None:
        console.print(rich_table(board, console.width))
    return board


def _work_file(work: Path | None, name: str) -> bytes | None:
    """``WORK/<name>`` as written by a job (None when there is none); a link is refused."""
    if work is None or not Path(work).is_dir():
        return None
    try:
        return read_below(Path(work), Path(name), name, MAX_JSON_BYTES)
    except FileNotFoundError:
        return None


def task_dirs(results_root: Path) -> list[Path]:
    root = Path(results_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in NOT_TASKS and not p.name.startswith(".")
                  and ((p / "run.json").is_file() or (p / "selection.json").is_file()
                       or (p / "leaderboard.csv").is_file()))


def read_selected(csv_path: Path) -> dict[str, str] | None:
    """The selected row of a leaderboard.csv (None when the file is missing or marks none)."""
    try:
        with open(csv_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return None
    return next((r for r in rows if r.get("selected") == SELECTED), None)


def write_overview(results_root: Path) -> Path:
    """results/leaderboard.md: one row per task, from each task's leaderboard.csv and run.json."""
    root = Path(results_root)
    rows = []
    for d in task_dirs(root):
        sel = read_selected(d / "leaderboard.csv")
        record = _read_record(d)
        meta = _meta(record)
        status = NA if record is None else ("ok" if record.get("succeeded") else "failed jobs")
        if sel is None:
            rows.append([d.name, "no selection", NA, NA, meta.get("date", NA), meta.get("budget", NA), status])
            continue
        spread = NA if sel.get("fold_std", NA) == NA else (
            f"{short(sel['fold_std'])} ({short(sel['fold_min'])}-{short(sel['fold_max'])})")
        rows.append([d.name, f"{sel['candidate']} (postprocessing: {sel['postprocessing']})",
                     short(sel["mean_fg_dice"]), spread, meta.get("date", NA), meta.get("budget", NA), status])
    text = "\n".join([
        "# Leaderboard", "",
        "One row per task: the selected model and its cross-validation mean foreground Dice (with its "
        "postprocessing). Details in `<task>/leaderboard.md`.", "",
        md_table(["task", "selected model", "CV mean fg Dice", "fold std (min-max)", "date", "budget", "run"], rows),
        "", f"Empty masks: {_empty_rule()}", "",
    ])
    for kind, title in (("crossval", "cross-validation"), ("test", "held-out test cases")):
        ranks = read_task_ranks(root, kind)
        if len(ranks) >= 2:
            text += "\n" + consensus_markdown(consensus(ranks), sorted(ranks)).replace(
                "## Consensus over tasks", f"## Consensus over tasks: {title}", 1)
    atomic_write_text(root / "leaderboard.md", text)
    return root / "leaderboard.md"


def read_task_ranks(results_root: Path, kind: str) -> dict[str, dict[str, int]]:
    """task -> candidate -> rank, from every ``<task>/ranking.csv`` rows of set ``kind`` (crossval | test)."""
    ranks: dict[str, dict[str, int]] = {}
    for d in task_dirs(results_root):
        try:
            with open(d / "ranking.csv", newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if r.get("set") == kind]
        except OSError:
            continue
        if rows:
            ranks[d.name] = {r["candidate"]: int(r["rank"]) for r in rows}
    return ranks


def _empty_rule() -> str:
    from selfunet.evaluation.metrics import EMPTY_MASK_RULE

    return EMPTY_MASK_RULE


def _job_ok(record: dict, job: str) -> bool:
    """Whether ``job`` succeeded or was skipped as done in this run (True when the graph has no such job)."""
    states = [j.get("status") for j in record.get("jobs", []) if j.get("job") == job]
    return not states or states[-1] in FINISHED_WELL


def write_task_results(task, work: Path, results_root: Path, record: dict) -> Leaderboard | None:
    """Called by the harness runner when a task settles (run.json already written): selection.json,
    leaderboard.csv/.md, the challenge-format predictions and results/leaderboard.md. Returns the
    leaderboard (None when none was written), which the HTML report shows.

    Outputs of a stage whose job failed in this run are left as they were (a stale selection or
    old test predictions must not pass for this run's).
    """
    from harness.results.export import export_task

    results_root, work = Path(results_root), Path(work)
    board = None
    try:
        if not _job_ok(record, "select"):
            log.warning("task %s: the select job did not succeed; leaderboard not updated.", task.name)
            return None
        board = render_task(task.name, results_root, work, task.metrics.nsd_tolerance_mm, task.metrics.hd95,
                            record, Console(stderr=True), processes=task.resources.cpus)
        if board is not None and _job_ok(record, "predict-test") and (work / "test_predictions").is_dir():
            export_task(task, work, results_root)
    finally:
        write_overview(results_root)
    return board


def rerender(tasks: list[str] | None, results_root: Path, work_root: Path | None = None,
             console: Console | None = None) -> list[Leaderboard]:
    """``harness leaderboard``: re-render the named tasks (default: every task under results_root)."""
    results_root = Path(results_root)
    names = tasks or [d.name for d in task_dirs(results_root)]
    if not names:
        raise SelfUNetError(f"{results_root}: no task results found; run `harness run TASKS --results "
                            f"{results_root}` first or pass --results DIR.")
    boards = []
    for name in names:
        if not (results_root / name).is_dir():
            known = ", ".join(d.name for d in task_dirs(results_root)) or "none"
            raise SelfUNetError(f"{results_root / name}: no results for task '{name}' (tasks there: {known}).")
        work = Path(work_root) / name if work_root is not None else None
        board = render_task(name, results_root, work, console=console)
        if board is not None:
            boards.append(board)
    write_overview(results_root)
    return boards

