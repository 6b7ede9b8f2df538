"""Test helpers shared by several test modules (import with ``from helpers import ...``).

The conversion here is written against SimpleITK directly, not through :mod:`selfunet.data.io`, so a
test that reads the same data in both layouts checks selfunet's readers against an independent
path.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import subprocess
import sys
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


def write_tiny_msd_task(root: Path, name: str = "Task04_Hippocampus", training: int = 6, test: int = 1,
                        shape: tuple[int, int, int] = (28, 36, 24), seed: int = 0) -> Path:
    """A tiny task in the Decathlon's own layout (``dataset.json``, ``imagesTr``, ``labelsTr``,
    ``imagesTs``; one MR-like channel, two structures), as its archives unpack: into ``root/name``.
    Also a macOS ``._*`` file beside an image, as archives made on a Mac carry (ignored by readers)."""
    import numpy as np

    folder = Path(root) / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape[::-1])
    entries, tests = [], []
    for number in range(1, training + test + 1):
        cz, cy, cx = (np.array(shape[::-1]) / 2 + rng.uniform(-2, 2, 3))
        blob = ((z - cz) / 5) ** 2 + ((y - cy) / 7) ** 2 + ((x - cx) / 6) ** 2
        label = np.where(blob < 1, np.where(x < cx, 1, 2), 0).astype(np.uint8)
        image = (100 + 60 * (label > 0) + rng.normal(0, 8, label.shape)).astype(np.float32)
        case = f"hippocampus_{number:03d}"
        img = sitk.GetImageFromArray(image)
        img.SetSpacing((1.0, 1.0, 1.0))
        if number <= training:
            sitk.WriteImage(img, str(folder / "imagesTr" / f"{case}.nii.gz"))
            seg = sitk.GetImageFromArray(label)
            seg.CopyInformation(img)
            sitk.WriteImage(seg, str(folder / "labelsTr" / f"{case}.nii.gz"))
            entries.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        else:
            sitk.WriteImage(img, str(folder / "imagesTs" / f"{case}.nii.gz"))
            tests.append(f"./imagesTs/{case}.nii.gz")
    (folder / "imagesTr" / "._hippocampus_001.nii.gz").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (folder / "dataset.json").write_text(json.dumps({
        "name": "Hippocampus", "description": "a tiny stand-in for the Decathlon task", "tensorImageSize": "3D",
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": training, "numTest": test, "training": entries, "test": tests}, indent=2))
    return folder


def pack_tar(folder: Path, archive: Path) -> str:
    """``folder`` packed as ``archive`` (plain tar, the folder's name at the top); returns its MD5 sum."""
    import hashlib
    import tarfile

    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=Path(folder).name)
    return hashlib.md5(Path(archive).read_bytes()).hexdigest()


#: set in the interpreter :func:`fresh_interpreter` starts, to the name of the test it runs
FRESH_INTERPRETER_ENV = "SELFUNET_TEST_FRESH_INTERPRETER"


def fresh_interpreter(test):
    """Run the decorated test in a new interpreter (its own pytest process) instead of this one.

    For tests that start torch DataLoader worker processes: the test process has usually run a
    network in OpenVINO by then (every CPU prediction may), and the two must not share a process
    (selfunet.runtime; the process loader refuses). The fixtures are still made here, unused.
    """

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        if os.environ.get(FRESH_INTERPRETER_ENV) == test.__name__:
            return test(*args, **kwargs)
        nodeid = f"{inspect.getsourcefile(test)}::{test.__name__}"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid],
                              env={**os.environ, FRESH_INTERPRETER_ENV: test.__name__}, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, (done.stdout[-6000:] + done.stderr[-3000:])
        assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]

    return wrapper
