"""The grand-challenge export gathers the checkpoints of members of other planners
(``3d_fullres@resenc-m`` lives in ``WORK/planners/resenc-m``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.challenge.gc_export import model_files
from selfunet.errors import SelfUNetError
from selfunet.evaluation.ensemble import Selection
from selfunet.inference.postprocess import PostprocessingRule
from selfunet.planning.plan import plan_experiment
from selfunet.planning.presets import planner_settings


def _selection(members: list[str]) -> Selection:
    return Selection(selected="+".join(members), members=members, postprocessing=PostprocessingRule(),
                     candidates=[], labels={"1": "a"}, file_ending=".nii.gz", num_cases=2)


def test_members_of_another_planner_bring_their_checkpoints(tmp_path: Path, demo_fingerprint) -> None:
    work = tmp_path / "work"
    plan_experiment(demo_fingerprint).save(work / "plan.json")
    plan_experiment(demo_fingerprint, planner_settings("resenc-m")).save(work / "planners" / "resenc-m" / "plan.json")
    for root in (work, work / "planners" / "resenc-m"):
        for fold in (0, 1):
            path = root / "train" / "3d_fullres" / f"fold_{fold}" / "checkpoint_final.pt"
            path.parent.mkdir(parents=True)
            path.write_text("weights")
    _selection(["3d_fullres", "3d_fullres@resenc-m"]).save(work / "selection.json")
    inside = sorted(name for _, name in model_files(work))
    assert inside == ["plan.json", "planners/resenc-m/train/3d_fullres/fold_0/checkpoint_final.pt",
                      "planners/resenc-m/train/3d_fullres/fold_1/checkpoint_final.pt", "selection.json",
                      "train/3d_fullres/fold_0/checkpoint_final.pt", "train/3d_fullres/fold_1/checkpoint_final.pt"]
    _selection(["2d@resenc-l"]).save(work / "selection.json")
    with pytest.raises(SelfUNetError, match="resenc-l"):
        model_files(work)
