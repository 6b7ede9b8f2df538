"""Shared fixtures. Other test modules may append fixtures here (small, session-scoped when the
data is expensive to make); keep each one independent of the others' state."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import convert_msd_to_nnunetv2, make_tiny_work

from selfunet.data.dataset import DatasetSpec, load_dataset
from selfunet.data.demo import make_demo_dataset
from selfunet.planning.fingerprint import compute_fingerprint
from selfunet.planning.fingerprint_types import Fingerprint

#: settings the command lines read from the environment; a developer's own values must not steer the tests.
USER_SETTINGS_ENV = ("nnUNet_raw", "HARNESS_DATA_MIRROR", "HARNESS_DATA_CHECKSUMS")


# A suite started in the background of a non-interactive shell (`cmd &`) inherits Ctrl-C ignored,
# and so would every process it starts: the tests that stop a child with Ctrl-C (`harness status
# --watch`, Ray's gentle cancel) would then wait for ever. Python's own handler is inherited as
# "default" across exec instead.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _no_user_data_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in USER_SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


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


# ---- training and prediction tests: a tiny plan on the demo task, preprocessed once ----------
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
