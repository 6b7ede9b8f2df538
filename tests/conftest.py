"""Shared fixtures. Other test modules may append fixtures here (small, session-scoped when the
data is expensive to make); keep each one independent of the others' state."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import convert_msd_to_nnunetv2

from selfunet.dataset import DatasetSpec, load_dataset
from selfunet.demo import make_demo_dataset
from selfunet.fingerprint import compute_fingerprint
from selfunet.fingerprint_types import Fingerprint


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
