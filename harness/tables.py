"""A leaderboard as text: CSV (every number, six decimals), Markdown and a rich table (four decimals).

One renderer for every place a leaderboard is shown, so the CSV that ``harness compare`` reads,
the Markdown committed under ``results/`` and the table printed after a run never disagree.
"""

from __future__ import annotations

import csv
import io

from rich.table import Table

from harness.leaderboard import NA, SELECTED, Leaderboard, fmt


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


def _display_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Human columns: four decimals, fold spread as "std (min-max)", members folded into the name."""
    cols = [c for c in board.columns() if c not in ("task", "members", "fold_mean", "fold_std", "fold_min",
                                                    "fold_max")]
    header = [("" if c == "selected" else c) for c in cols] + ["fold std (min-max)"]
    rows = []
    for rec in board.records():
        cells = []
        for c in cols:
            value = rec[c]
            if c == "selected":
                value = "**→**" if value == SELECTED else ""
            elif c not in ("candidate", "postprocessing", "num_cases"):
                value = short(value)
            cells.append(value)
        spread = NA if rec["fold_std"] == NA else (
            f"{short(rec['fold_std'])} ({short(rec['fold_min'])}-{short(rec['fold_max'])})")
        rows.append([*cells, spread])
    return header, rows


def to_markdown(board: Leaderboard) -> str:
    header, rows = _display_rows(board)
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
    return "\n".join(lines).rstrip() + "\n"


def rich_table(board: Leaderboard) -> Table:
    header, rows = _display_rows(board)
    table = Table(title=f"{board.task}: cross-validation leaderboard", caption=f"Empty masks: {board.empty_mask_rule}")
    for h in header:
        table.add_column(h, justify="left" if h in ("", "candidate", "postprocessing") else "right",
                         no_wrap=h == "candidate", min_width=6 if h.startswith(("dice", "nsd", "hd95")) else None)
    for rec, row in zip(board.records(), rows, strict=True):
        cells = [("[bold green]→[/]" if c == "**→**" else c) for c in row]
        table.add_row(*cells, style="bold" if rec["selected"] == SELECTED else None)
    return table

