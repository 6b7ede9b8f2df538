"""Several training seeds per configuration (``harness run --seeds 0,1,2``): where each seed's work
lives, and selection by the mean over seeds.

The first seed keeps the task's work directory as it is (``WORK/``: with one seed nothing
changes, and a run that adds seeds reuses the finished first one). Every further seed ``s`` gets
``WORK/seeds/<s>/``, a work directory whose ``fingerprint.json``, ``plan.json``, ``splits.json``
and ``preprocessed/`` are relative links to the first one's (preprocessing does not depend on the
seed, and all seeds share the folds), and which holds its own ``train/``, ``crossval/``,
``ensembles/`` and ``selection.json``.

When every seed's ``selfunet select`` has run, :func:`select_by_seed_mean` writes ``WORK/seeds.json``
(each candidate's cross-validation scores per seed, raw and with that seed's postprocessing rule)
and makes ``WORK/selection.json`` select the candidate with the best mean over seeds (ties to the
simpler candidate, as ``selfunet select`` does). The selected candidate's postprocessing rule and
the models deployed are those of the first seed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from pathlib import Path

from selfunet.artifacts import atomic_write_json
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

SEEDS_FILE = "seeds.json"
SHARED = ("fingerprint.json", "plan.json", "splits.json", "preprocessed")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2] (distinct, in the order given)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SelfUNetError(f"--seeds {text!r}: give integers separated by commas, e.g. --seeds 0,1,2.") from None
    if not seeds:
        raise SelfUNetError("--seeds: give at least one seed, e.g. --seeds 0,1,2.")
    if len(set(seeds)) != len(seeds):
        raise SelfUNetError(f"--seeds {text!r}: a seed is repeated; each seed trains once.")
    return seeds


def seed_work(work: Path, seeds: list[int], seed: int) -> Path:
    """The work directory of ``seed``: WORK itself for the first seed, WORK/seeds/<seed> otherwise."""
    return Path(work) if seed == seeds[0] else Path(work) / "seeds" / str(seed)


def link_seed_work(work: Path, seed_dir: Path) -> None:
    """Make ``seed_dir`` share the first seed's fingerprint, plan, splits and preprocessed data (relative links)."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        target, link = Path(work) / name, seed_dir / name
        if not target.exists():
            raise SelfUNetError(f"{target}: missing; the seed work directory {seed_dir} shares it (rerun the "
                                "preprocess job).")
        relative = os.path.relpath(target, seed_dir)
        if link.is_symlink() and os.readlink(link) == relative:
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            raise SelfUNetError(f"{link}: a folder where the seed work directory links to {target}; remove it.")
        link.symlink_to(relative, target_is_directory=target.is_dir())


def _scores(selection) -> dict[str, dict]:
    out = {}
    for cand in selection.candidates:
        rule = cand.postprocessing
        out[cand.name] = {
            "raw": {"mean_fg_dice": cand.mean_foreground_dice, "dice": dict(cand.dice)},
            "postprocessed": None if rule is None else {
                "mean_fg_dice": rule.mean_foreground_dice_after, "dice": dict(rule.dice_after),
                "rule_changes_something": not rule.is_identity},
        }
    return out


def select_by_seed_mean(work: Path, seeds: list[int]) -> dict:
    """Write WORK/seeds.json and make WORK/selection.json select by the mean over seeds (module doc)."""
    from selfunet.evaluation.ensemble import Selection, rank_candidates
    from selfunet.inference.postprocess import PostprocessingRule

    work = Path(work)
    selections = {s: Selection.load(seed_work(work, seeds, s) / "selection.json") for s in seeds}
    primary = selections[seeds[0]]
    names = [c.name for c in primary.candidates if all(any(o.name == c.name for o in sel.candidates)
                                                       for sel in selections.values())]
    per_seed = {s: _scores(sel) for s, sel in selections.items()}

    def mean_of(name: str) -> float | None:
        values = [per_seed[s][name]["raw"]["mean_fg_dice"] for s in seeds]
        finite = [v for v in values if v is not None and not math.isnan(v)]
        return statistics.fmean(finite) if len(finite) == len(values) else None

    averaged = [c.model_copy(update={"mean_foreground_dice": mean_of(c.name)}) for c in primary.candidates
                if c.name in names]
    winner = rank_candidates(averaged)[0]
    chosen = next(c for c in primary.candidates if c.name == winner.name)
    if chosen.name != primary.selected:
        log.info("%s: %s has the best mean over seeds %s; %s was best on seed %d alone.", work, chosen.name, seeds,
                 primary.selected, seeds[0])
        rule = chosen.postprocessing or PostprocessingRule(num_cases=chosen.num_cases)
        updated = primary.model_copy(update={"selected": chosen.name, "members": list(chosen.members),
                                             "postprocessing": rule})
        updated.save(work / "selection.json")
    record = {
        "schema_version": 1, "seeds": seeds,
        "work_dirs": {str(s): os.path.relpath(seed_work(work, seeds, s), work) for s in seeds},
        "selected": chosen.name, "selected_on_first_seed": primary.selected,
        "selected_by": "mean over seeds of the cross-validation mean foreground Dice (raw predictions)",
        "candidates": {n: {str(s): per_seed[s][n] for s in seeds} for n in names},
    }
    atomic_write_json(work / SEEDS_FILE, record)
    return record


def load_seed_scores(path: Path) -> dict | None:
    """WORK/seeds.json (or its copy in results/<task>/), None when absent: a one-seed run."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and len(data.get("seeds", [])) > 1 else None


def seed_stats(scores: dict, candidate: str, postprocessed: bool) -> tuple[dict[str, float | None],
                                                                        dict[str, float | None]] | None:
    """(mean, std) over seeds of "fg" (mean foreground Dice) and each class's Dice, for the candidate's
    raw row or its postprocessed one (each seed with its own rule); None when a seed lacks it."""
    per_seed = (scores.get("candidates") or {}).get(candidate)
    if not per_seed:
        return None
    entries = [(s.get("postprocessed") if postprocessed else s.get("raw")) for s in per_seed.values()]
    if any(e is None for e in entries):
        return None
    keys = ["fg", *sorted({k for e in entries for k in e["dice"]}, key=int)]
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for key in keys:
        values = [e["mean_fg_dice"] if key == "fg" else e["dice"].get(key) for e in entries]
        finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        mean[key] = statistics.fmean(finite) if finite else None
        std[key] = statistics.pstdev(finite) if len(finite) > 1 else None
    return mean, std


def apply_seed_means(board, scores: dict) -> None:
    """Replace each leaderboard row's Dice by its mean over seeds (std beside it) and say so in the notes.

    The raw row's seeds are each seed's raw cross-validation; the postprocessed row's, each seed's
    candidate with that seed's own rule. NSD/HD95, fold spread and cost stay the first seed's; the
    ranking averages the per-case Dice over seeds
    (:func:`harness.results.leaderboard.average_per_case_over_seeds`).
    """
    seeds = scores["seeds"]
    for row in board.rows:
        stats = seed_stats(scores, row.candidate, postprocessed=row.postprocessing != "none")
        if stats is None:
            continue
        mean, std = stats
        row.mean_fg_dice = mean.get("fg")
        row.dice = {v: mean.get(v) for v in row.dice}
        row.seeds, row.seed_std = len(seeds), std
    board.notes.append(
        f"Seeds {', '.join(map(str, seeds))}: mean_fg_dice and per-class Dice are means over seeds, std_* the "
        "population std over seeds (a postprocessed row: each seed with its own rule); selection by the mean "
        f"({scores.get('selected_by', '')}). NSD/HD95, fold spread and cost are the first seed's.")
