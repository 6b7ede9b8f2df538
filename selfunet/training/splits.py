"""Cross-validation folds (docs/explanation/design.md#folds): seeded K-fold over sorted case ids, kept as editable JSON.

The folds are written once, on first training, to ``WORK/splits.json`` as a list of
``{"train": [...], "val": [...]}``; every later training run reads that file, so all folds and
configurations agree on which cases are out-of-fold. A user may edit the file or supply their
own; it is validated against the dataset's case ids whenever it is read.

The assignment reproduces the reference implementation's (scikit-learn's shuffled ``KFold`` on
the sorted ids with ``RandomState(seed)``): the permuted ids are cut into ``num_folds``
contiguous blocks, the first ``n % num_folds`` blocks one case larger, and both lists of a fold
are kept in sorted order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from selfunet.artifacts import atomic_write_json
from selfunet.errors import SelfUNetError, clip

log = logging.getLogger(__name__)

DEFAULT_NUM_FOLDS = 5
DEFAULT_SEED = 12345


class Fold(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    train: list[str]
    val: list[str]


def make_splits(case_ids: Sequence[str], num_folds: int = DEFAULT_NUM_FOLDS, seed: int = DEFAULT_SEED) -> list[Fold]:
    """K folds in which every case is in exactly one validation set.

    With fewer cases than folds, each case becomes its own validation fold (leave-one-out) and a
    warning says so; fewer than two cases cannot be cross-validated at all.
    """
    ids = sorted(str(c) for c in case_ids)
    if len(set(ids)) != len(ids):
        dupes = sorted({c for c in ids if ids.count(c) > 1})
        raise SelfUNetError(f"duplicate case ids cannot be split into folds: {dupes}.")
    if num_folds < 2:
        raise SelfUNetError(f"num_folds must be >= 2 for cross-validation, got {num_folds}.")
    n = len(ids)
    if n < 2:
        raise SelfUNetError(f"cross-validation needs at least 2 training cases, the dataset has {n}.")
    if n < num_folds:
        log.warning("only %d training cases for %d folds: using %d folds (leave-one-out).", n, num_folds, n)
        num_folds = n
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = [n // num_folds + (1 if k < n % num_folds else 0) for k in range(num_folds)]
    folds: list[Fold] = []
    start = 0
    for size in sizes:
        val_idx = set(order[start : start + size].tolist())
        start += size
        folds.append(
            Fold(
                train=[ids[i] for i in range(n) if i not in val_idx],
                val=[ids[i] for i in range(n) if i in val_idx],
            )
        )
    return folds


def save_splits(path: Path, splits: Sequence[Fold]) -> None:
    atomic_write_json(Path(path), [fold.model_dump() for fold in splits])


def load_splits(path: Path, case_ids: Sequence[str]) -> list[Fold]:
    """Read and validate a splits file against the dataset's case ids."""
    path = Path(path)
    fix = f"fix or delete {path} (it is recreated from the dataset on the next training run)"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, or bytes that are not UTF-8
        raise SelfUNetError(f"{path} is not readable JSON ({clip(str(exc))}); {fix}.") from None
    if not isinstance(raw, list) or not raw:
        raise SelfUNetError(f"{path} must be a non-empty list of {{\"train\": [...], \"val\": [...]}}; {fix}.")
    known = {str(c) for c in case_ids}
    folds: list[Fold] = []
    for k, entry in enumerate(raw):
        if not isinstance(entry, dict) or set(entry) != {"train", "val"}:
            raise SelfUNetError(f"{path}: fold {k} must have exactly the keys 'train' and 'val'; {fix}.")
        for key in ("train", "val"):
            values = entry[key]
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise SelfUNetError(f"{path}: fold {k} '{key}' must be a list of case ids (strings); {fix}.")
            unknown = sorted(set(values) - known)
            if unknown:
                raise SelfUNetError(
                    f"{path}: fold {k} '{key}' names case ids that are not in the dataset: "
                    f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}; {fix}."
                )
            if len(set(values)) != len(values):
                raise SelfUNetError(f"{path}: fold {k} '{key}' lists a case more than once; {fix}.")
        if not entry["train"] or not entry["val"]:
            raise SelfUNetError(f"{path}: fold {k} has an empty 'train' or 'val' list; {fix}.")
        overlap = sorted(set(entry["train"]) & set(entry["val"]))
        if overlap:
            raise SelfUNetError(f"{path}: fold {k} has cases in both 'train' and 'val': {overlap[:10]}; {fix}.")
        folds.append(Fold(train=list(entry["train"]), val=list(entry["val"])))
    validated = {c for fold in folds for c in fold.val}
    missing = sorted(known - validated)
    if missing:
        log.warning(
            "%s: %d case(s) are in no validation fold and will get no out-of-fold prediction: %s",
            path, len(missing), missing[:10],
        )
    return folds


def load_or_create_splits(
    path: Path, case_ids: Sequence[str], num_folds: int = DEFAULT_NUM_FOLDS, seed: int = DEFAULT_SEED
) -> list[Fold]:
    """The folds in ``path`` if it exists (user edits win), else new ones written there atomically."""
    path = Path(path)
    if path.exists():
        folds = load_splits(path, case_ids)
        if len(folds) != num_folds:
            log.info("%s holds %d folds (not %d); using the file.", path, len(folds), num_folds)
        return folds
    folds = make_splits(case_ids, num_folds, seed)
    save_splits(path, folds)
    log.info("wrote %d folds over %d cases to %s", len(folds), len(case_ids), path)
    return folds


def get_fold(splits: Sequence[Fold], fold: int) -> Fold:
    if not 0 <= fold < len(splits):
        raise SelfUNetError(
            f"fold {fold} does not exist: the splits have {len(splits)} folds (0..{len(splits) - 1}); "
            "pick one of those or edit the splits file."
        )
    return splits[fold]
