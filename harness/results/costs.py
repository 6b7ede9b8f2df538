"""What a leaderboard candidate cost: training and inference wall time and peak memory.

Read from ``WORK/train/<configuration>/fold_<k>/cost.json`` (written by ``selfunet train`` through
:func:`selfunet.pipeline.write_cost`, in the job's own process, so it holds in every sandbox and
executor). A candidate's training time is the sum over its member configurations' folds, its
inference time the sum of predicting their validation cases (the out-of-fold predictions the
leaderboard scores), and its peak memory the largest of any of those jobs: GPU tensor memory
(``torch.cuda.max_memory_allocated``) when they ran on a GPU, else resident memory
(``getrusage``). With several seeds, the first seed's runs.
"""

from __future__ import annotations

import json
from pathlib import Path


def fold_costs(work: Path, configuration: str) -> list[dict]:
    """The cost files of a member's folds; ``3d_fullres@resenc-m`` trains under ``WORK/planners/resenc-m/``."""
    from selfunet.workdir import WorkDir

    where, name = WorkDir(Path(work)).member(configuration)
    out = []
    for path in sorted((where.root / "train" / name).glob("fold_*/cost.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            out.append(data)
    return out


def candidate_cost(work: Path, members: list[str]) -> dict | None:
    """train_seconds, inference_seconds, peak_memory_mb, memory of a candidate; None without cost files."""
    costs = [c for m in members for c in fold_costs(work, m)]
    if not costs:
        return None
    kinds = sorted({str(c.get("memory", "")) for c in costs} - {""})
    return {
        "train_seconds": sum(float(c.get("train_seconds", 0.0)) for c in costs),
        "inference_seconds": sum(float(c.get("prediction_seconds", 0.0)) for c in costs),
        "peak_memory_mb": max(float(c.get("peak_memory_mb", 0.0)) for c in costs),
        "memory": "+".join(kinds),
    }


def apply_costs(board, work: Path) -> None:
    """Fill each leaderboard row's cost columns from the work directory (rows without cost files stay n/a)."""
    for row in board.rows:
        cost = candidate_cost(work, row.members)
        if cost is not None:
            row.train_seconds, row.inference_seconds = cost["train_seconds"], cost["inference_seconds"]
            row.peak_memory_mb, row.memory = cost["peak_memory_mb"], cost["memory"]
