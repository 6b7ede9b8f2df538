"""Oracle: our planner vs the reference nnU-Net v2 planner on crafted Decathlon-like fingerprints.

Skipped unless a python with nnunetv2 is available (``SELFUNET_REFERENCE_PYTHON`` or
/work/refvenv/bin/python). The comparison itself lives in bench/oracle_plans.py, which also
writes the side-by-side table of docs/planning.md.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "oracle_plans.py"


def _reference_python() -> str | None:
    candidate = os.environ.get("SELFUNET_REFERENCE_PYTHON", "/work/refvenv/bin/python")
    if not Path(candidate).is_file():
        return None
    probe = subprocess.run([candidate, "-c", "import nnunetv2"], capture_output=True, timeout=120)
    return candidate if probe.returncode == 0 else None


REFERENCE_PYTHON = _reference_python()
pytestmark = [
    pytest.mark.oracle,
    pytest.mark.slow,
    pytest.mark.skipif(REFERENCE_PYTHON is None, reason="no python with nnunetv2 (set SELFUNET_REFERENCE_PYTHON)"),
]


@functools.lru_cache(maxsize=1)
def _bench():
    spec = importlib.util.spec_from_file_location("oracle_plans", BENCH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["oracle_plans"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@functools.lru_cache(maxsize=1)
def _comparison():
    return _bench().compare(REFERENCE_PYTHON)


def _mismatches(rows, fields) -> list[str]:
    return [
        f"{r.task} {r.config} {f}: reference {None if r.reference is None else r.reference[f]} "
        f"vs ours {None if r.ours is None else r.ours[f]}"
        for r in rows
        for f in fields
        if not r.same(f)
    ]


def test_2d_and_fullres_identical_to_reference() -> None:
    main, _, _ = _comparison()
    assert len({r.task for r in main}) >= 8
    assert _mismatches(main, _bench().FIELDS) == []


def test_memory_estimate_identical_to_reference_network() -> None:
    main, _, _ = _comparison()
    assert _mismatches(main, ("estimate",)) == []


def test_lowres_identical_with_reference_cascade_constants() -> None:
    _, lowres, _ = _comparison()
    assert any(r.reference is not None for r in lowres), "no crafted task exercises the lowres loop"
    assert _mismatches(lowres, (*_bench().FIELDS, "estimate")) == []
