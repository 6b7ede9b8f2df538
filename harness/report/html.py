"""The static HTML report of a results folder: ``results/index.html`` plus ``results/<task>/index.html``.

Self-contained: styles inline, every figure an inline PNG (:mod:`harness.report.plots`), no script
and no request to the network, so the folder can be zipped, mailed or kept as a CI artifact.

A task page holds the run record (code version, budget, seeds, device, job timings), the
leaderboard, the rankings (cross-validation and, when submissions were scored, held-out test) with
the challenge-report figures (significance map, blob plot, podium plot, ranking robustness under
four schemes with Kendall's tau: :mod:`harness.report.sections`), the matched-compute comparison
(Dice against training time and peak memory, Pareto-optimal candidates marked), the environment
fingerprint, per-case Dice per class, training curves per fold (``log.jsonl`` of
every ``WORK/train/<configuration>/fold_<k>/``) and mid-slice overlays of a few test predictions.
What is not on disk any more (a deleted work directory) is left out with a note, never invented.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from harness.report import plots, sections
from harness.report.markup import e, image, page, table
from harness.results.leaderboard import NA, Leaderboard
from harness.results.publish import budget_text, read_selected, read_task_ranks, task_dirs
from harness.results.tables import display_rows
from selfunet.artifacts import atomic_write_text

log = logging.getLogger(__name__)

#: test predictions shown as overlays per task.
OVERLAYS = 3

# -- one task -------------------------------------------------------------------------------------
def record_section(record: dict | None) -> list[str]:
    if not record:
        return ["<h2 id=\"record\">Run record</h2>", "<p class=\"note\">No run.json: not run by `harness run`.</p>"]
    when = record.get("finished") or record.get("started")
    device = record.get("device") or {}
    rows = [
        ["code version", record.get("code_version", NA)], ["budget", budget_text(record)],
        ["seeds", ", ".join(f"{k} {v}" for k, v in (record.get("seeds") or {}).items()) or NA],
        ["training seeds", ", ".join(str(s) for s in record.get("train_seeds") or []) or NA],
        ["dataset", record.get("dataset", NA)],
        ["device", ", ".join(f"{k}: {v}" for k, v in device.items()) or NA],
        ["executor / sandbox", f"{record.get('executor', NA)} / {record.get('sandbox', NA)}"],
        ["finished", time.strftime("%Y-%m-%d %H:%M", time.localtime(float(when))) if when else NA],
        ["wall time", f"{float(record.get('seconds', 0)):.1f} s"],
        ["succeeded", "yes" if record.get("succeeded") else "no"],
    ]
    rows += sections.environment_rows(record)
    jobs = [[j.get("job", ""), j.get("status", ""), f"{float(j.get('seconds') or 0):.1f}"]
            for j in record.get("jobs", [])]
    return ["<h2 id=\"record\">Run record</h2>", table(["", "value"], rows, "record", text_columns=(0, 1)),
            table(["job", "status", "seconds"], jobs, "jobs", text_columns=(0, 1))]


def _per_case(board: Leaderboard) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in board.rows:
        if row.per_case is not None and row.rank_name not in out:
            out[row.rank_name] = row.per_case
    return out


def training_section(work: Path | None) -> list[str]:
    from selfunet.training.training_log import read_log

    body = ["<h2 id=\"training\">Training curves</h2>"]
    train = work / "train" if work is not None else None
    if train is None or not train.is_dir():
        return [*body, "<p class=\"note\">No training logs (the work directory is not here).</p>"]
    for config in sorted(p for p in train.iterdir() if p.is_dir()):
        folds = {f.name.replace("_", " "): read_log(f / "log.jsonl") for f in sorted(config.glob("fold_*"))}
        folds = {k: v for k, v in folds.items() if v}
        if folds:
            body.append(image(plots.training_curves(folds, config.name), f"training curves {config.name}"))
    return body


def overlay_section(task_dir: Path, record: dict | None, labels: dict[str, str]) -> list[str]:
    from selfunet.data.dataset import load_dataset
    from selfunet.errors import SelfUNetError

    body = ["<h2 id=\"predictions\">Test predictions</h2>"]
    folders = sorted(p for p in (task_dir / "predictions").glob("*") if p.is_dir())
    if not folders or not record or not record.get("dataset"):
        return [*body, "<p class=\"note\">No exported test predictions.</p>"]
    try:
        spec = load_dataset(Path(record["dataset"]))
    except SelfUNetError as exc:
        return [*body, f"<p class=\"note\">Test images not readable: {e(exc)}</p>"]
    shown = 0
    for case in spec.test:
        candidates = [folders[0] / f"{case.case_id}{spec.file_ending}", folders[0] / case.images[0].name]
        prediction = next((p for p in candidates if p.is_file()), None)
        if prediction is None:
            continue
        body.append(image(plots.overlay(case.images, prediction, labels, case.case_id), f"overlay {case.case_id}"))
        shown += 1
        if shown == OVERLAYS:
            break
    if not shown:
        body.append("<p class=\"note\">No prediction matches a test image.</p>")
    return body


def write_task_page(board: Leaderboard, task_dir: Path, record: dict | None = None,
                    work: Path | None = None) -> Path:
    """``results/<task>/index.html`` from the task's leaderboard (rankings included) and what is on disk."""
    task_dir = Path(task_dir)
    header, rows = display_rows(board)
    rows = [[c.replace("**→**", "→") for c in row] for row in rows]
    body = [f"<h1>{e(board.task)}</h1>", "<p><a href=\"../index.html\">all tasks</a></p>"]
    sel = board.selected_row
    if sel is not None:
        body.append(f"<p>Selected: <b>{e(sel.candidate)}</b> (postprocessing: {e(sel.postprocessing)}), "
                    f"cross-validation mean foreground Dice {sel.mean_fg_dice or float('nan'):.4f}.</p>")
    body += ["<h2 id=\"leaderboard\">Leaderboard</h2>",
             table(header, rows, "leaderboard", [r.selected for r in board.rows], text_columns=(0, 1, 2)),
             f"<p class=\"note\">Empty masks: {e(board.empty_mask_rule)}</p>",
             *(f"<p class=\"note\">{e(n)}</p>" for n in board.notes)]
    body.append("<h2 id=\"ranking\">Ranking</h2>")
    if board.ranking is None and board.test_ranking is None:
        body.append("<p class=\"note\">No per-case scores to rank (the work directory is not here).</p>")
    if board.ranking is not None:
        body += sections.ranking_section(board.ranking, "cross-validation cases", "ranking")
    if board.test_ranking is not None:
        body += sections.ranking_section(board.test_ranking, "held-out test cases (harness score)", "test-ranking")
    body += sections.matched_section(board)
    body.append("<h2 id=\"per-case\">Per-case Dice</h2>")
    per_case = _per_case(board)
    body.append(image(plots.per_case_dice(per_case, board.labels), "per-case Dice") if per_case else
                "<p class=\"note\">No per-case scores (the work directory is not here).</p>")
    body += training_section(work)
    body += overlay_section(task_dir, record, board.labels)
    body += record_section(record)
    path = task_dir / "index.html"
    atomic_write_text(path, page(f"{board.task}: selfunet report", body))
    return path


# -- the index ------------------------------------------------------------------------------------
def write_index(results_root: Path) -> Path:
    """``results/index.html``: one row per task (linking its page) and the consensus rankings."""
    root = Path(results_root)
    rows, links = [], []
    for d in task_dirs(root):
        sel = read_selected(d / "leaderboard.csv")
        record = _read_json(d / "run.json")
        rows.append([d.name, f"{sel['candidate']} ({sel['postprocessing']})" if sel else "no selection",
                     sel["mean_fg_dice"][:6] if sel else NA, budget_text(record),
                     NA if record is None else ("ok" if record.get("succeeded") else "failed jobs")])
        links.append(d.name if (d / "index.html").is_file() else None)
    body = ["<h1>selfunet results</h1>", "<h2 id=\"tasks\">Tasks</h2>",
            table(["task", "selected model", "CV mean fg Dice", "budget", "run"], rows, "tasks",
                  text_columns=(0, 1, 3, 4))]
    if any(links):
        items = "".join(f'<li><a href="{e(n)}/index.html">{e(n)}</a></li>' for n in links if n)
        body.append(f"<ul>{items}</ul>")
    for kind, title in (("crossval", "cross-validation"), ("test", "held-out test cases")):
        ranks = read_task_ranks(root, kind)
        if len(ranks) >= 2:
            body += sections.consensus_section(ranks, title, kind)
    path = root / "index.html"
    atomic_write_text(path, page("selfunet results", body))
    return path


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_report(boards: list[Leaderboard], results_root: Path, work_root: Path | None = None) -> Path:
    """Every task page of ``boards`` and the index; the work directory of a task is ``work_root/<task>``
    or the one its run.json records."""
    root = Path(results_root)
    for board in boards:
        record = _read_json(root / board.task / "run.json")
        work = Path(work_root) / board.task if work_root is not None else (
            Path(record["work"]) if record and record.get("work") else None)
        write_task_page(board, root / board.task, record, work)
    return write_index(root)
