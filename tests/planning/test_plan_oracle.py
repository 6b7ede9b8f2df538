"""Oracle: our planner vs the reference nnU-Net v2 planner on crafted Decathlon-like fingerprints.

Needs the reference (the ``reference_python`` fixture: ``$SELFUNET_REFERENCE_PYTHON``; CI installs
it with bench/reference/setup_reference.sh and sets ``SELFUNET_REQUIRE_REFERENCE=1``, so a missing
reference fails there instead of skipping). The comparison itself lives in bench/oracle_plans.py,
which also writes the side-by-side table of docs/reference/planning.md. One reference process plans every
fingerprint (nnunetv2 is imported once), shared by the three tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "oracle_plans.py"
pytestmark = [pytest.mark.oracle, pytest.mark.slow]


def _bench():
    if "oracle_plans" not in sys.modules:
        spec = importlib.util.spec_from_file_location("oracle_plans", BENCH)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["oracle_plans"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["oracle_plans"]


@pytest.fixture(scope="module")
def comparison(reference_python: str):
    return _bench().compare(reference_python, processes=1)


def _mismatches(rows, fields) -> list[str]:
    return [
        f"{r.task} {r.config} {f}: reference {None if r.reference is None else r.reference[f]} "
        f"vs ours {None if r.ours is None else r.ours[f]}"
        for r in rows
        for f in fields
        if not r.same(f)
    ]


def test_2d_and_fullres_identical_to_reference(comparison) -> None:
    main, _, _ = comparison
    assert len({r.task for r in main}) >= 8
    assert _mismatches(main, _bench().FIELDS) == []


def test_memory_estimate_identical_to_reference_network(comparison) -> None:
    main, _, _ = comparison
    assert _mismatches(main, ("estimate",)) == []


def test_lowres_identical_with_reference_cascade_constants(comparison) -> None:
    _, lowres, _ = comparison
    assert any(r.reference is not None for r in lowres), "no crafted task exercises the lowres loop"
    assert _mismatches(lowres, (*_bench().FIELDS, "estimate")) == []
