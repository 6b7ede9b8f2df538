"""The documented layout of a work directory: one place that knows where each artifact lives.

```
WORK/
  fingerprint.json                      selfunet fingerprint
  plan.json                             selfunet plan
  preprocessed/<data_identifier>/       selfunet preprocess (one folder per distinct preprocessing)
      <case>.npy  <case>_seg.npy  <case>_fg.npz  <case>.json
  splits.json                           folds (written on first training; editable)
  train/<configuration>/fold_<k>/       selfunet train (checkpoints, log, plot, validation/)
  planners/<preset>/                    another planner preset's work directory (same layout, same
                                        fingerprint and splits), trained beside the default one
```
Commands take the work directory explicitly; nothing comes from environment variables.

A *member* names a trained configuration for selection and prediction: ``3d_fullres`` is WORK's
own, ``3d_fullres@resenc-m`` is the one under ``WORK/planners/resenc-m/``, so candidates of
several planners are ranked, ensembled and predicted side by side.
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

    def planner(self, preset: str) -> WorkDir:
        """The work directory of another planner preset's plan (``WORK/planners/<preset>``)."""
        return WorkDir(self.root / "planners" / preset)

    def member(self, name: str) -> tuple[WorkDir, str]:
        """(work directory, configuration) of a member name (``3d_fullres`` or ``3d_fullres@resenc-m``)."""
        configuration, preset = split_member(name)
        return (self if preset is None else self.planner(preset)), configuration


#: joins a configuration and the planner preset whose plan it comes from: ``3d_fullres@resenc-m``.
PRESET_SEPARATOR = "@"


def split_member(name: str) -> tuple[str, str | None]:
    """``"3d_fullres@resenc-m"`` -> ``("3d_fullres", "resenc-m")``; a plain name has preset None."""
    configuration, sep, preset = name.partition(PRESET_SEPARATOR)
    return configuration, (preset if sep and preset != "default" else None)


def member_name(configuration: str, preset: str | None) -> str:
    """The inverse of :func:`split_member` (the default preset adds no suffix)."""
    return configuration if preset in (None, "default") else f"{configuration}{PRESET_SEPARATOR}{preset}"
