"""A leaderboard as text: CSV (every number, six decimals), Markdown and a rich table (four decimals).

One renderer for every place a leaderboard is shown, so the CSV that ``harness compare`` reads,
the Markdown committed under ``results/`` and the table printed after a run never disagree.
"""

from __future__ import annotations

import csv
import io

from rich.console import Console
from rich.table import Table

from harness.results.leaderboard import COST_COLUMNS, NA, RANK_COLUMNS, SELECTED, Leaderboard, class_column, fmt
from harness.results.ranking import SCHEMES, ConsensusRow, RankRow, TaskRanking, case_rule, kendall_taus

#: the p-value matrix is written for at most this many candidates.
MATRIX_MAX = 10


RANKING_CSV_COLUMNS = ("task", "set", "rank", "candidate", "mean_fg_dice", "rank_low", "rank_high", "p_first",
                       "case_rank", "mean_case_rank", "better_than", "cases")


def ranking_csv(rankings: dict[str, TaskRanking]) -> str:
    """results/<task>/ranking.csv: one row per ranked candidate of each set (crossval, test)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RANKING_CSV_COLUMNS)
    for kind, ranking in rankings.items():
        for r in ranking.rows:
            writer.writerow([ranking.task, kind, r.rank, r.name, fmt(r.mean_fg_dice), r.rank_low, r.rank_high,
                             fmt(r.p_first, 3), r.case_rank, fmt(r.mean_case_rank, 3), "; ".join(r.better_than),
                             len(ranking.cases)])
    return buffer.getvalue()


def to_csv(board: Leaderboard) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=board.columns(), lineterminator="\n")
    writer.writeheader()
    writer.writerows(board.records())
    return buffer.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def short(text: str) -> str:
    return text if text == NA else f"{float(text):.4f}"


def rank_cell(rank: RankRow | None) -> str:
    """"2 (1-3)": the aggregate-then-rank rank and its 95 % bootstrap interval."""
    return NA if rank is None else f"{rank.rank} ({rank.rank_low}-{rank.rank_high})"


def display_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Human columns: four decimals, "mean ± std" over seeds, fold spread as "std (min-max)", the cost,
    rank with its interval."""
    hidden = ("task", "members", "fold_mean", "fold_std", "fold_min", "fold_max", "seeds", *COST_COLUMNS,
              *RANK_COLUMNS)
    cols = [c for c in board.columns() if c not in hidden and not c.startswith("std_")]
    header = [("" if c == "selected" else c) for c in cols] + [
        "fold std (min-max)", "train (s)", "inference (s)", "peak memory (MiB)", "rank (95% CI)"]
    rows = []
    for row, rec in zip(board.rows, board.records(), strict=True):
        cells = []
        for c in cols:
            value = rec[c]
            if c == "selected":
                value = "**→**" if value == SELECTED else ""
            elif c not in ("candidate", "postprocessing", "num_cases"):
                value = short(value)
                if rec.get(f"std_{c}", NA) != NA:
                    value = f"{value} ± {short(rec[f'std_{c}'])}"
            cells.append(value)
        spread = NA if rec["fold_std"] == NA else (
            f"{short(rec['fold_std'])} ({short(rec['fold_min'])}-{short(rec['fold_max'])})")
        memory = NA if rec["peak_memory_mb"] == NA else f"{rec['peak_memory_mb']} ({rec['memory']})"
        rows.append([*cells, spread, rec["train_seconds"], rec["inference_seconds"], memory,
                     rank_cell(board.rank_of(row))])
    return header, rows


def ranking_markdown(ranking: TaskRanking, title: str) -> str:
    """The ranking table, how it was made, and the Holm-adjusted p-values of every pair."""
    rows = [[str(r.rank), r.name, f"{r.mean_fg_dice:.4f}", f"{r.rank_low}-{r.rank_high}", f"{r.p_first:.3f}",
             f"{r.case_rank} ({r.mean_case_rank:.2f})", ", ".join(r.better_than) or "-"] for r in ranking.rows]
    pairs = len(ranking.p_values)
    lines = [f"## {title}", "",
             md_table(["rank", "candidate", "mean fg Dice", "rank 95% CI", "P(first)", "case rank (mean)",
                       f"significantly better than (p < {ranking.alpha:g})"], rows), "",
             f"rank: aggregate-then-rank (mean foreground Dice). rank 95% CI and P(first): {ranking.resamples} "
             f"bootstrap resamples of the {len(ranking.cases)} cases (seed {ranking.seed}). case rank: "
             "rank-then-aggregate (mean over cases of each case's rank). Significance: one-sided Wilcoxon "
             f"signed-rank tests on per-case mean foreground Dice, Holm-corrected over {pairs} ordered pairs.",
             "", case_rule(ranking.policy), ""]
    if ranking.missing:
        lines += [f"Cases without a score or failed ({ranking.policy.describe()}): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(ranking.missing.items())), ""]
    if ranking.excluded:
        lines += [f"Cases left out for every candidate: {', '.join(ranking.excluded)}", ""]
    names = [r.name for r in ranking.rows]
    if 1 < len(names) <= MATRIX_MAX:
        matrix = [[a, *("-" if a == b else f"{ranking.p_values[(a, b)]:.3g}" for b in names)] for a in names]
        lines += ["Holm-adjusted p-values of \"row better than column\":", "", md_table(["", *names], matrix), ""]
    if ranking.schemes:
        header, rows = robustness_rows(ranking)
        taus = ", ".join(f"{a} vs {b} {tau_text(t)}" for (a, b), t in kendall_taus(ranking.schemes).items())
        lines += ["Ranking robustness: the rank of each candidate under each scheme.", "", md_table(header, rows), "",
                  f"Kendall's tau between schemes: {taus}.", ""]
    return "\n".join(lines)


def tau_text(tau: float) -> str:
    return NA if tau != tau else f"{tau:.2f}"


def robustness_rows(ranking: TaskRanking) -> tuple[list[str], list[list[str]]]:
    """candidate x scheme ranks (the robustness table of the Markdown and the HTML report)."""
    header = ["candidate", *(SCHEMES[k] for k in ranking.schemes)]
    rows = [[r.name, *(str(ranking.schemes[k][r.name]) for k in ranking.schemes)] for r in ranking.rows]
    return header, rows


def matched_markdown(board: Leaderboard) -> str:
    """The matched-compute table (harness.results.matched); empty when no candidate has cost files."""
    from harness.results.matched import MATCHED_NOTE, cost_points, matched_rows

    points = cost_points(board)
    if not any(p.has_cost for p in points):
        return ""
    header, rows = matched_rows(points)
    return "\n".join(["## Matched compute: Dice against training time and peak memory", "", md_table(header, rows), "",
                      MATCHED_NOTE, ""])


def consensus_markdown(rows: list[ConsensusRow], tasks: list[str]) -> str:
    table = [[NA if r.rank is None else str(r.rank), r.name, f"{r.mean_rank:.2f}",
              *(str(r.ranks[t]) if t in r.ranks else "-" for t in tasks)] for r in rows]
    return "\n".join(["## Consensus over tasks", "",
                      md_table(["rank", "candidate", "mean rank", *tasks], table), "",
                      "Mean over tasks of each task's aggregate-then-rank rank; candidates missing from a task "
                      "are listed unranked.", ""])


def to_markdown(board: Leaderboard) -> str:
    header, rows = display_rows(board)
    sel = board.selected_row
    lines = [f"# Leaderboard: {board.task}", ""]
    lines += [f"- {k}: {v}" for k, v in board.meta.items()]
    if sel is not None:
        lines.append(f"- selected: **{sel.candidate}** (postprocessing: {sel.postprocessing}), cross-validation "
                     f"mean foreground Dice {fmt(sel.mean_fg_dice, 4)}")
    lines += ["", "Every candidate without and with its postprocessing; scores are means over all "
              "cross-validation cases.", "", md_table(header, rows), ""]
    lines += [f"Empty masks: {board.empty_mask_rule}", ""]
    lines += [f"{note}" + "\n" for note in board.notes]
    matched = matched_markdown(board)
    if matched:
        lines += [matched]
    if board.ranking is not None:
        lines += [ranking_markdown(board.ranking, "Ranking on the cross-validation cases")]
    if board.test_ranking is not None:
        lines += [ranking_markdown(board.test_ranking, "Ranking on the held-out test cases (harness score)")]
    return "\n".join(lines).rstrip() + "\n"


# -- the terminal: never wider than the console ---------------------------------------------------
def _short_rule(text: str) -> str:
    if text == "none":
        return "-"
    if text.startswith("none"):
        return "no rule"
    return (text.replace("largest foreground component", "largest fg").replace("largest component of ", "largest: "))


def _abbreviate(header: str, most: int = 12) -> str:
    return header if len(header) <= most else header[: most - 1] + "…"


def fit_columns(columns: list[tuple[str, list[str], int]], width: int) -> tuple[list[int], list[str]]:
    """Indices of the columns to show in ``width`` cells, dropping the least important first
    (highest priority number; priority 0 is never dropped), and the names of those dropped."""
    keep = list(range(len(columns)))

    def needed(idx: list[int]) -> int:
        return sum(max(len(columns[i][0]), *(len(c) for c in columns[i][1]), 1) for i in idx) + 3 * len(idx) + 1

    dropped = []
    for i in sorted(range(len(columns)), key=lambda i: (-columns[i][2], -i)):
        if needed(keep) <= width or columns[i][2] == 0:
            break
        keep.remove(i)
        dropped.append(columns[i][0])
    return keep, dropped


def rich_table(board: Leaderboard, width: int | None = None) -> Table:
    """The leaderboard for a terminal or a log: the marker, the candidate and its mean foreground Dice
    always; secondary columns (postprocessing, rank, per-class Dice, NSD, HD95, spread, cases) in
    that order of importance as long as the table fits ``width`` (default: the console's)."""
    records = board.records()
    columns: list[tuple[str, list[str], int]] = [
        ("", ["→" if r["selected"] == SELECTED else "" for r in records], 0),
        ("candidate", [r["candidate"] for r in records], 0),
        ("pp", [_short_rule(r["postprocessing"]) for r in records], 2),
        ("fg Dice", [short(r["mean_fg_dice"]) + (f" ± {short(r['std_mean_fg_dice'])}"
                                                  if r.get("std_mean_fg_dice", NA) != NA else "") for r in records], 0),
        ("rank", [rank_cell(board.rank_of(row)) for row in board.rows], 3),
    ]
    for v in board.labels:
        columns.append((_abbreviate(board.labels[v]), [short(r[class_column("dice", board.labels, v)])
                                                       for r in records], 4))
    if board.nsd_tolerance_mm is not None:
        columns.append(("NSD", [short(r["nsd"]) for r in records], 5))
        columns += [(f"NSD {board.labels[v]}", [short(r[class_column("nsd", board.labels, v)]) for r in records], 8)
                    for v in board.labels]
    if board.hd95:
        columns.append(("HD95", [short(r["hd95"]) for r in records], 6))
        columns += [(f"HD95 {board.labels[v]}", [short(r[class_column("hd95", board.labels, v)]) for r in records],
                     9) for v in board.labels]
    columns.append(("fold std", [short(r["fold_std"]) for r in records], 7))
    columns.append(("n", [r["num_cases"] for r in records], 10))
    columns.append(("train s", [r["train_seconds"] for r in records], 11))
    columns.append(("peak MiB", [r["peak_memory_mb"] for r in records], 12))
    keep, dropped = fit_columns(columns, width if width is not None else Console().width)
    caption = f"Empty masks: {board.empty_mask_rule}"
    if dropped:
        caption = f"{len(dropped)} more column(s) in leaderboard.md. {caption}"
    table = Table(title=f"{board.task}: cross-validation leaderboard", caption=caption)
    for i in keep:
        header = columns[i][0]
        table.add_column(header, justify="left" if header in ("", "candidate", "pp") else "right", no_wrap=True)
    for n, rec in enumerate(records):
        cells = [columns[i][1][n] for i in keep]
        cells = [("[bold green]→[/]" if c == "→" and i == 0 else c) for c, i in zip(cells, keep)]
        table.add_row(*cells, style="bold" if rec["selected"] == SELECTED else None)
    return table
