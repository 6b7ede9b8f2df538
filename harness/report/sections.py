"""Sections of the HTML report beyond the leaderboard: the challenge-style ranking figures, the
ranking-robustness check, the matched-compute comparison, the consensus heatmap over tasks and
the environment fingerprint. Each returns a list of HTML fragments (:mod:`harness.report.markup`).
"""

from __future__ import annotations

from harness.report import plots_ranking
from harness.report.markup import e, image, note, table
from harness.results.leaderboard import NA, Leaderboard
from harness.results.ranking import SCHEMES, TaskRanking, case_rule, consensus, kendall_taus
from harness.results.tables import robustness_rows, tau_text


def ranking_section(ranking: TaskRanking, title: str, css: str) -> list[str]:
    """The ranking table, the missing-case policy, and its figures: significance map, blob plot,
    podium plot and the robustness check."""
    rows = [[str(r.rank), r.name, f"{r.mean_fg_dice:.4f}", f"{r.rank_low}-{r.rank_high}", f"{r.p_first:.3f}",
             f"{r.case_rank} ({r.mean_case_rank:.2f})", ", ".join(r.better_than) or "-"] for r in ranking.rows]
    header = ["rank", "candidate", "mean fg Dice", "rank 95% CI", "P(first)", "case rank (mean)",
              f"significantly better than (Holm, p < {ranking.alpha:g})"]
    body = [f"<h3>{e(title)}</h3>", table(header, rows, css, text_columns=(1, 6)),
            note(f"{ranking.resamples} bootstrap resamples of {len(ranking.cases)} cases (seed {ranking.seed}); "
                 "one-sided Wilcoxon signed-rank tests on per-case mean foreground Dice, Holm-corrected over "
                 f"{len(ranking.p_values)} ordered pairs."),
            f'<p class="note policy" id="missing-{e(css)}">{e(case_rule(ranking.policy))}</p>']
    if ranking.missing:
        body.append(note("Cases without a score or failed: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(ranking.missing.items()))))
    if ranking.excluded:
        body.append(note(f"Left out for every candidate: {', '.join(ranking.excluded)}"))
    body += [image(plots_ranking.significance_map(ranking), f"significance map: {title}", f"significance-{css}"),
             image(plots_ranking.blob_plot(ranking), f"blob plot: {title}", f"blob-{css}"),
             image(plots_ranking.podium_plot(ranking), f"podium plot: {title}", f"podium-{css}")]
    return body + robustness_section(ranking, css)


def robustness_section(ranking: TaskRanking, css: str) -> list[str]:
    """Ranks under every scheme (table and line plot) and Kendall's tau between the schemes."""
    if not ranking.schemes:
        return []
    header, rows = robustness_rows(ranking)
    keys = list(ranking.schemes)
    taus = kendall_taus(ranking.schemes)
    matrix = [[SCHEMES[a], *("1" if a == b else tau_text(taus.get((a, b), taus.get((b, a), float("nan"))))
                             for b in keys)] for a in keys]
    return [f'<h4 id="robustness-{e(css)}">Ranking robustness</h4>',
            table(header, rows, f"robustness {css}-robustness", text_columns=(0,)),
            image(plots_ranking.robustness_plot(ranking), "ranking robustness line plot", f"robustness-plot-{css}"),
            table(["Kendall's tau", *(SCHEMES[k] for k in keys)], matrix, f"kendall {css}-kendall"),
            note("Kendall's tau-b between the candidates' ranks under two schemes: 1 the same order, -1 the reverse. "
                 "A ranking that changes with the scheme is not robust.")]


def matched_section(board: Leaderboard) -> list[str]:
    """Dice against training time and peak memory per candidate, Pareto-optimal ones marked."""
    from harness.results.matched import MATCHED_NOTE, cost_points, matched_rows

    body = ['<h2 id="matched">Matched compute: Dice against cost</h2>']
    points = cost_points(board)
    if not any(p.has_cost for p in points):
        return [*body, note("No cost files (WORK/train/*/fold_*/cost.json): the work directory is not here.")]
    header, rows = matched_rows(points)
    return [*body, table(header, rows, "matched", [p.pareto for p in points], text_columns=(0, 1, 6)),
            note(MATCHED_NOTE), image(plots_ranking.cost_plot(points), "Dice against cost", "cost-plot")]


def consensus_section(ranks: dict[str, dict[str, int]], title: str, kind: str) -> list[str]:
    """Over several tasks: the consensus table and the ranking heatmap (candidates x tasks)."""
    tasks = sorted(ranks)
    rows = consensus(ranks)
    cons = [[NA if r.rank is None else str(r.rank), r.name, f"{r.mean_rank:.2f}",
             *(str(r.ranks.get(t, "-")) for t in tasks)] for r in rows]
    return [f"<h2>Consensus over tasks: {e(title)}</h2>",
            table(["rank", "candidate", "mean rank", *tasks], cons, "consensus", text_columns=(1,)),
            image(plots_ranking.consensus_heatmap(ranks, [r.name for r in rows]), f"consensus heatmap: {title}",
                  f"consensus-heatmap-{kind}")]


def environment_rows(record: dict) -> list[list[str]]:
    """The run record's environment fingerprint (harness.results.environment), one row per item."""
    from harness.results.environment import describe, precisions

    env = record.get("environment")
    if not env:
        return [["environment", "not recorded (a run from before fingerprints)"]]
    gpu, cpu = env.get("gpu") or {}, env.get("cpu") or {}
    jobs = (env.get("precision") or {}).get("jobs") or {}
    return [["environment", describe(env)],
            ["GPU", f"{gpu.get('count', 0)} x {gpu.get('model')} (driver {gpu.get('driver')}, "
                    f"compute capability {gpu.get('capability')})" if gpu.get("count") else "none"],
            ["CUDA / cuDNN / torch", f"{env.get('cuda')} / {env.get('cudnn')} / {env.get('torch')}"],
            ["CPU", f"{cpu.get('model')}, {cpu.get('cores')} cores, native bf16 flags: "
                    f"{', '.join(cpu.get('bf16_flags') or []) or 'none'}"],
            ["precision", "; ".join(f"{line} x{n}" for line, n in jobs.items())
             or "/".join(precisions(env)) or NA],
            ["selfunet / python", f"{env.get('selfunet')} / {env.get('python')}"],
            ["image", f"{env.get('image')} {', '.join(env.get('image_digest') or [])}".strip()
             if env.get("image") else "none (process sandbox)"]]
