"""Oracle: the residual-encoder presets vs nnU-Net v2 2.8.1's nnUNetPlannerResEncM/L/XL.

The ten Decathlon-shaped fingerprints of bench/oracle_plans.py, planned by all three reference
planners in one reference process (bench/oracle_resenc_plans.py, which also writes the table of
docs/reference/planning.md) and by our presets: every configuration's spacing, strides, kernels, features,
residual blocks per stage, patch size, batch size and memory estimate must be identical.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "oracle_resenc_plans.py"
pytestmark = [pytest.mark.oracle, pytest.mark.slow]


@functools.lru_cache(maxsize=1)
def _bench():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("oracle_resenc_plans", BENCH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["oracle_resenc_plans"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def comparison(reference_python: str):
    rows, _ = _bench().compare(reference_python)
    return rows


@pytest.mark.parametrize("preset", ["resenc-m", "resenc-l", "resenc-xl"])
def test_preset_plans_identical_to_reference(comparison, preset: str) -> None:
    rows = comparison[preset]
    assert len({r.task for r in rows}) == 10
    assert any(r.reference is not None for r in rows if r.config == "3d_lowres"), "no task exercises the lowres loop"
    mismatches = [
        f"{r.task} {r.config} {f}: reference {None if r.reference is None else r.reference[f]} "
        f"vs ours {None if r.ours is None else r.ours[f]}"
        for r in rows for f in _bench().FIELDS if not r.same(f)
    ]
    assert mismatches == []
