"""The ranking figures of challenge reports (as challengeR draws them), each an inline PNG.

* :func:`significance_map`: the pairwise one-sided Wilcoxon + Holm results as a heatmap;
* :func:`blob_plot`: every candidate's bootstrap rank distribution (area = share of resamples);
* :func:`podium_plot`: per-case scores at the place each candidate took in that case, one line per
  case across the candidates, and below how often each candidate took each place;
* :func:`robustness_plot`: the rank of each candidate under each ranking scheme, a line per candidate;
* :func:`consensus_heatmap`: candidates x tasks, each cell the candidate's rank in that task;
* :func:`cost_plot`: cross-validation Dice against training time and peak memory, Pareto-optimal
  candidates marked (:mod:`harness.results.matched`).

The numbers drawn come from :class:`~harness.results.ranking.TaskRanking` methods (``significance``,
``rank_frequencies``, ``case_places``, ``podium_counts``, ``schemes``), which the tests check on
constructed scores; the functions here only draw them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from harness.report.plots import _pyplot, encode
from harness.results.ranking import SCHEMES, TaskRanking


def _width(n: int) -> float:
    return max(4.0, 0.9 * n + 1.8)


def significance_map(ranking: TaskRanking) -> str:
    """Rows and columns in rank order; a dark cell: the row is significantly better than the column."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    names, matrix = ranking.names, ranking.significance()
    n = len(names)
    fig, ax = plt.subplots(figsize=(_width(n), _width(n) * 0.8))
    shown = matrix.astype(float)
    np.fill_diagonal(shown, np.nan)
    ax.imshow(shown, cmap=ListedColormap(["#f3f3f3", "#d8572a"]), vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if i != j:
                p = ranking.p_values[(names[i], names[j])]
                ax.text(j, i, f"{p:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] else "#555")
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("... than this candidate")
    ax.set_ylabel("this candidate is better ...")
    ax.set_title(f"significance map (one-sided Wilcoxon, Holm, p < {ranking.alpha:g} dark)", fontsize=10)
    return encode(fig)


def blob_plot(ranking: TaskRanking) -> str:
    """Blob plot: circle area = share of bootstrap resamples with that rank; cross = observed rank,
    line = 95 % interval, diamond = median bootstrap rank."""
    plt = _pyplot()
    n = len(ranking.rows)
    freq = ranking.rank_frequencies()
    fig, ax = plt.subplots(figsize=(_width(n), 3.4))
    for i, row in enumerate(ranking.rows):
        ranks = np.nonzero(freq[i])[0]
        ax.scatter(np.full(len(ranks), i), ranks + 1, s=700 * freq[i, ranks], alpha=0.55, color=f"C{i % 10}")
        ax.plot([i, i], [row.rank_low, row.rank_high], color="black", lw=1)
        ax.scatter([i], [row.rank], marker="x", color="black", s=30, zorder=3)
        if ranking.bootstrap_ranks.size:
            ax.scatter([i], [np.median(ranking.bootstrap_ranks[:, i])], marker="D", facecolor="none",
                       edgecolor="black", s=28, zorder=3)
    ax.plot([-0.5, n - 0.5], [0.5, n + 0.5], color="#bbb", lw=0.8, ls=":")
    ax.set_xticks(range(n), ranking.names, rotation=30, ha="right")
    ax.set_ylabel("rank")
    ax.set_yticks(range(1, n + 1))
    ax.set_ylim(n + 0.6, 0.4)
    ax.set_title(f"blob plot: bootstrap rank distribution ({ranking.resamples} resamples)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return encode(fig)


def podium_plot(ranking: TaskRanking) -> str:
    """Top: each case's score of each candidate at the place the candidate took in that case (a line
    joins one case's points); bottom: how many cases each candidate took each place in."""
    plt = _pyplot()
    n, names = len(ranking.rows), ranking.names
    places, scores, counts = ranking.case_places(), ranking.case_scores, ranking.podium_counts()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(_width(n) + 1.5, 5.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.3]})
    width = 0.8 / max(n, 1)
    offsets = (np.arange(n) - (n - 1) / 2) * width
    for case in range(places.shape[0]):
        xs = places[case] + offsets
        order = np.argsort(xs)
        top.plot(xs[order], scores[order, case], color="#999", lw=0.6, alpha=0.6)
    for i, name in enumerate(names):
        top.scatter(places[:, i] + offsets[i], scores[i], s=16, color=f"C{i % 10}", label=name, zorder=3)
        bottom.bar(np.arange(1, n + 1) + offsets[i], counts[i], width=width, color=f"C{i % 10}")
    top.set_ylabel("per-case mean fg Dice")
    top.set_title("podium plot: per-case scores at each case's place", fontsize=10)
    top.legend(fontsize=7, loc="lower left", ncol=min(n, 4))
    top.grid(axis="y", alpha=0.3)
    bottom.set_xticks(range(1, n + 1), [f"place {k}" for k in range(1, n + 1)])
    bottom.set_ylabel("cases")
    return encode(fig)


def robustness_plot(ranking: TaskRanking) -> str:
    """Line plot: x = ranking scheme, y = rank, one line per candidate."""
    plt = _pyplot()
    schemes = list(ranking.schemes)
    n = len(ranking.rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(schemes) + 2.5), 3.4))
    for i, name in enumerate(ranking.names):
        ranks = [ranking.schemes[s][name] for s in schemes]
        ax.plot(range(len(schemes)), ranks, marker="o", color=f"C{i % 10}", label=name)
    ax.set_xticks(range(len(schemes)), [SCHEMES[s].replace(" (", "\n(") for s in schemes], fontsize=8)
    ax.set_yticks(range(1, n + 1))
    ax.set_ylim(n + 0.4, 0.6)
    ax.set_ylabel("rank")
    ax.set_title("ranking robustness: the rank under each scheme", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    return encode(fig)


def consensus_heatmap(ranks: Mapping[str, Mapping[str, int]], order: Sequence[str]) -> str:
    """Candidates (``order``: the consensus order) x tasks; the colour and number are the rank."""
    plt = _pyplot()
    tasks = sorted(ranks)
    matrix = np.array([[ranks[t].get(name, np.nan) for t in tasks] for name in order], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(tasks) + 3.0), max(2.5, 0.45 * len(order) + 1.5)))
    top = np.nanmax(matrix) if np.isfinite(matrix).any() else 1.0
    image = ax.imshow(matrix, cmap="viridis_r", vmin=1, vmax=max(top, 2.0), aspect="auto")
    for i in range(len(order)):
        for j in range(len(tasks)):
            value = matrix[i, j]
            ax.text(j, i, "-" if np.isnan(value) else f"{int(value)}", ha="center", va="center", fontsize=8,
                    color="white" if not np.isnan(value) and value > (top + 1) / 2 else "black")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(order)), list(order))
    fig.colorbar(image, ax=ax, label="rank")
    ax.set_title("ranks per task (rows in consensus order)", fontsize=10)
    return encode(fig)


def cost_plot(points) -> str:
    """Two panels: CV Dice against training time and against peak memory; Pareto-optimal
    candidates (:func:`harness.results.matched.cost_points`) as filled stars."""
    plt = _pyplot()
    measured = [p for p in points if p.has_cost]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, attr, label in ((axes[0], "train_seconds", "training time (s, all folds)"),
                            (axes[1], "peak_memory_mb", "peak memory (MiB)")):
        for i, p in enumerate(measured):
            x = getattr(p, attr)
            ax.scatter([x], [p.dice], s=120 if p.pareto else 45, marker="*" if p.pareto else "o",
                       color=f"C{i % 10}", edgecolor="black" if p.pareto else "none", zorder=3,
                       label=f"{p.candidate}{' (Pareto)' if p.pareto else ''}")
            ax.annotate(p.candidate, (x, p.dice), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    memory = "+".join(sorted({p.memory for p in measured})) or "n/a"
    axes[0].set_ylabel("CV mean fg Dice")
    axes[1].set_title(f"memory: {memory}", fontsize=8)
    axes[0].set_title("Dice against cost (stars: Pareto-optimal)", fontsize=10)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return encode(fig)
