"""The documented layout of a work directory: one place that knows where each artifact lives.

```
WORK/
  fingerprint.json                      selfunet fingerprint
  plan.json                             selfunet plan
  preprocessed/<data_identifier>/       selfunet preprocess (one folder per distinct preprocessing)
      <case>.npy  <case>_seg.npy  <case>_fg.npz  <case>.json
  splits.json                           folds (written on first training; editable)
  train/<configuration>/fold_<k>/       selfunet train (checkpoints, log, plot, validation/)
```
Commands take the work directory explicitly; nothing comes from environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def fingerprint(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    def preprocessed(self, data_identifier: str) -> Path:
        return self.root / "preprocessed" / data_identifier

    def training(self, configuration: str, fold: int) -> Path:
        return self.root / "train" / configuration / f"fold_{fold}"
