"""Shared fixtures. Other test modules may append fixtures here (small, session-scoped when the
data is expensive to make); keep each one independent of the others' state."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import convert_msd_to_nnunetv2

from selfunet.data.dataset import DatasetSpec, load_dataset
from selfunet.data.demo import make_demo_dataset
from selfunet.planning.fingerprint import compute_fingerprint
from selfunet.planning.fingerprint_types import Fingerprint


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetSpec:
    """The synthetic demo task (MSD layout, 4D NIfTI): 6 training and 2 test cases. Read-only!"""
    return make_demo_dataset(tmp_path_factory.mktemp("demo_msd"), num_training=6, num_test=2, seed=0)


@pytest.fixture(scope="session")
def demo_dataset_nnunetv2(demo_dataset: DatasetSpec, tmp_path_factory: pytest.TempPathFactory) -> DatasetSpec:
    """The same cases as ``demo_dataset`` in nnU-Net v2 layout (one file per channel). Read-only!"""
    root = convert_msd_to_nnunetv2(demo_dataset.root, tmp_path_factory.mktemp("demo_nnunetv2"))
    return load_dataset(root)


@pytest.fixture(scope="session")
def demo_fingerprint(demo_dataset: DatasetSpec) -> Fingerprint:
    """Fingerprint of ``demo_dataset`` (computed in-process)."""
    return compute_fingerprint(demo_dataset, processes=1)


@pytest.fixture(scope="session")
def demo_root(demo_dataset: DatasetSpec) -> Path:
    return Path(demo_dataset.root)


# ---- H9 (training / prediction tests): a tiny plan on the demo task, preprocessed once ----------
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


@pytest.fixture(scope="session")
def tiny_work_template(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fingerprint + tiny plan + preprocessed demo data. Read-only: copy it (``tiny_work``)."""
    return make_tiny_work(demo_root, tmp_path_factory.mktemp("tiny_work"))


@pytest.fixture
def tiny_work(tiny_work_template: Path, tmp_path: Path) -> Path:
    """A private, writable copy of ``tiny_work_template`` (nothing trained yet)."""
    import shutil

    return Path(shutil.copytree(tiny_work_template, tmp_path / "work"))


# ---- the reference implementation (nnU-Net v2) for oracle tests ---------------------------------
#: a python interpreter with nnunetv2 installed; `.ci/run` installs it with
#: bench/reference/setup_reference.sh and exports it.
REFERENCE_PYTHON_ENV = "SELFUNET_REFERENCE_PYTHON"
#: set to 1 (CI does) to make a missing reference a failure instead of a skip.
REQUIRE_REFERENCE_ENV = "SELFUNET_REQUIRE_REFERENCE"


def find_reference_python() -> str | None:
    """The reference's python from ``$SELFUNET_REFERENCE_PYTHON`` if it imports nnunetv2, else None."""
    candidate = os.environ.get(REFERENCE_PYTHON_ENV)
    if not candidate or not Path(candidate).is_file():
        return None
    probe = subprocess.run([candidate, "-c", "import nnunetv2"], capture_output=True, timeout=120)
    return candidate if probe.returncode == 0 else None


@pytest.fixture(scope="session")
def reference_python() -> str:
    """Path of a python with nnunetv2. Skips when absent, unless CI requires it: then it fails."""
    found = find_reference_python()
    if found is None:
        message = (f"no python with nnunetv2: set {REFERENCE_PYTHON_ENV} to one "
                   f"(`bash bench/reference/setup_reference.sh` installs one and prints its path)")
        if os.environ.get(REQUIRE_REFERENCE_ENV) == "1":
            pytest.fail(message + f"; {REQUIRE_REFERENCE_ENV}=1 makes the oracle tests mandatory")
        pytest.skip(message)
    return found
