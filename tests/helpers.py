"""Test helpers shared by several test modules (import with ``from helpers import ...``).

The conversion here is written against SimpleITK directly, not through :mod:`selfunet.data.io`, so a
test that reads the same data in both layouts checks selfunet's readers against an independent
path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import SimpleITK as sitk


def split_channels(image: sitk.Image) -> list[sitk.Image]:
    """One 3D image per volume of a 4D image (a 3D image is returned as it is)."""
    if image.GetDimension() == 3:
        return [image]
    size = list(image.GetSize())
    channels = []
    for c in range(size[3]):
        channels.append(sitk.Extract(image, size=[*size[:3], 0], index=[0, 0, 0, c]))
    return channels


def convert_msd_to_nnunetv2(msd_root: Path, out_root: Path) -> Path:
    """Write the MSD dataset at ``msd_root`` in nnU-Net v2 layout into ``out_root`` (returned)."""
    msd_root, out_root = Path(msd_root), Path(out_root)
    raw = json.loads((msd_root / "dataset.json").read_text())
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out_root / sub).mkdir(parents=True, exist_ok=True)

    def case_id(entry: str) -> str:
        return Path(entry).name[: -len(".nii.gz")]

    for entry in raw["training"]:
        cid = case_id(entry["image"])
        image = sitk.ReadImage(str(msd_root / entry["image"]))
        for c, channel in enumerate(split_channels(image)):
            sitk.WriteImage(channel, str(out_root / "imagesTr" / f"{cid}_{c:04d}.nii.gz"), useCompression=True)
        shutil.copyfile(msd_root / entry["label"], out_root / "labelsTr" / f"{cid}.nii.gz")
    for entry in raw.get("test", []):
        cid = case_id(entry)
        image = sitk.ReadImage(str(msd_root / entry))
        for c, channel in enumerate(split_channels(image)):
            sitk.WriteImage(channel, str(out_root / "imagesTs" / f"{cid}_{c:04d}.nii.gz"), useCompression=True)
    descriptor = {
        "name": raw.get("name", msd_root.name),
        "channel_names": raw["modality"],
        "labels": {name: int(value) for value, name in raw["labels"].items()},
        "numTraining": len(raw["training"]),
        "file_ending": ".nii.gz",
    }
    (out_root / "dataset.json").write_text(json.dumps(descriptor, indent=2))
    return out_root


def make_tiny_work(demo_root: Path, work: Path, preset: str = "default") -> Path:
    """A work directory over ``demo_root`` whose 3d_fullres configuration is shrunk (patch
    16x32x32, 3 stages of 8/16/32 features) so a training iteration takes a fraction of a second.
    Preprocessing does not depend on patch or topology, so the data is the real plan's.
    ``preset`` plans with that planner preset; a residual-encoder preset keeps its architecture
    (stem + 1/3/4 residual blocks, one decoder conv per stage) in the tiny topology."""
    from selfunet.planning.fingerprint import run_fingerprint
    from selfunet.planning.plan import run_plan
    from selfunet.planning.plan_types import NetworkTopology
    from selfunet.preprocessing.preprocess import run_preprocess

    run_fingerprint(demo_root, work, processes=1)
    plan = run_plan(work, preset=preset)
    full = plan.configurations["3d_fullres"]
    shared = dict(dimension=3, features_per_stage=[8, 16, 32], kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                  strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    if full.topology.architecture == "residual_encoder":
        topology = NetworkTopology(**shared, architecture="residual_encoder", blocks_per_stage_encoder=[1, 3, 4],
                                   convs_per_stage_encoder=[2, 6, 8], convs_per_stage_decoder=[1, 1])
    else:
        topology = NetworkTopology(**shared, convs_per_stage_encoder=[2, 2, 2], convs_per_stage_decoder=[2, 2])
    tiny = full.model_copy(update={"patch_size": [16, 32, 32], "batch_size": 2, "topology": topology})
    plan = plan.model_copy(update={"configurations": {"3d_fullres": tiny}})
    plan.save(work / "plan.json")
    run_preprocess(work, ["3d_fullres"], processes=1)
    return work
