"""bench/gpu_check.py keeps working without a GPU: its CPU mode runs every code path at tiny sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_mode_writes_json_and_markdown_and_says_what_it_skipped(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--out", str(tmp_path), "--iterations", "2", "--device", "cpu"])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["mode"] == "cpu" and saved["container"] == module.SKIPPED
    assert saved["environment"]["precision"]["dtype"] in ("fp32", "bfloat16")
    assert [p["name"].split()[0] for p in saved["plans"]] == ["4ch", "2D"]
    for plan in saved["plans"]:
        measured, compiled = plan["training"]
        assert measured["s_per_iteration"] > 0 and 0 <= measured["data_wait_fraction"] <= 1
        assert measured["peak_gpu_memory_gb"] == module.SKIPPED and compiled["s_per_iteration"] == module.SKIPPED
        # rounded: a tiny CPU case may print 0.0
        assert plan["prediction"]["predict_s_mirroring"] >= 0 and plan["prediction"]["predict_s_no_mirroring"] >= 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "CPU mode: skipped: no CUDA device" in table and table.count("| 4ch 16^3") == 2
