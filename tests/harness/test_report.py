"""The HTML report in a real headless Chromium (Selenium + chromedriver): no console errors, every
image decoded, the tables with the expected rows; a screenshot is saved (tmp dir and docs/images/).

The results folder is built from the constructed work directory of test_leaderboard (real label
maps, real evaluation and selection), plus training logs in the trainer's format, cost files, one
test image with an exported prediction, two scored submissions (one with a failed case) and an
environment fingerprint; the descriptor counts a missing case as Dice 0.25 (``scoring.missing``).
Every figure the report draws is checked by its id: present, decoded, not empty.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_leaderboard import CASES, SHAPE, _reference, _write, build_work

from harness.report.html import write_report
from harness.results.environment import fingerprint
from harness.results.publish import render_task

REPO = Path(__file__).resolve().parents[2]
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def make_results(tmp_path: Path) -> tuple[Path, list]:
    work = build_work(tmp_path)
    data = tmp_path / "data"
    _write(data / "imagesTs" / "case_100.nii.gz", _reference(2) * 50.0 + np.random.default_rng(1).normal(0, 5, SHAPE),
           np.float32)
    descriptor = json.loads((data / "dataset.json").read_text())
    descriptor |= {"test": ["./imagesTs/case_100.nii.gz"], "numTest": 1}
    (data / "dataset.json").write_text(json.dumps(descriptor))
    for fold in (0, 1):
        log = work / "train" / "3d_fullres" / f"fold_{fold}" / "log.jsonl"
        log.parent.mkdir(parents=True)
        log.write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0 / (e + 1 + fold), "val_loss": 1.1 / (e + 1),
                                           "pseudo_dice": 0.5 + 0.1 * e, "pseudo_dice_ema": 0.5 + 0.08 * e,
                                           "lr": 0.01, "epoch_seconds": 1.5}) + "\n" for e in range(5)))
        for config, seconds, memory in (("3d_fullres", 60.0, 900.0), ("2d", 20.0, 400.0)):
            cost = work / "train" / config / f"fold_{fold}" / "cost.json"
            cost.parent.mkdir(parents=True, exist_ok=True)
            cost.write_text(json.dumps({"train_seconds": seconds, "prediction_seconds": 2.0,
                                        "peak_memory_mb": memory + fold, "memory": "rss"}))
    results = tmp_path / "results"
    boards = []
    for task in ("tiny", "tiny2"):
        out = results / task
        _write(out / "predictions" / "TaskTiny" / "case_100.nii.gz", _reference(2))
        scores = out / "scores"
        scores.mkdir(parents=True)
        for name, organ in (("team_a", 0.9), ("team_b", 0.6)):
            status = ["crash" if name == "team_b" and i == 0 else "ok" for i in range(len(CASES))]
            (scores / f"{name}.csv").write_text("case,class,dice,status,reason,seconds\n" + "".join(
                f"{c},organ,{organ + i / 100:.3f},{status[i]},,1.0\n{c},lesion,{organ:.3f},{status[i]},,1.0\n"
                for i, c in enumerate(CASES)))
        record = {"task": task, "work": str(work), "dataset": str(data), "code_version": "0.1.0+tree.test",
                  "finished": 1_700_000_000.0, "seconds": 321.0, "succeeded": True, "executor": "local",
                  "sandbox": "process", "seeds": {"train": 0, "split": 12345}, "device": {"type": "cpu"},
                  "descriptor_content": {"budget": {"preset": "ci"},
                                         "scoring": {"missing": "value", "missing_value": 0.25}},
                  "environment": fingerprint(work, "process", None, "auto"),
                  "train_config": {"epochs": 5, "iterations_per_epoch": 12, "num_folds": 2},
                  "jobs": [{"job": "plan", "status": "succeeded", "seconds": 1.2},
                           {"job": "train-3d_fullres-fold0", "status": "succeeded", "seconds": 60.0}]}
        (out / "run.json").write_text(json.dumps(record))
        boards.append(render_task(task, results, work, record=record))
    write_report(boards[:1], results)  # tiny2 only feeds the index (consensus): no page of its own
    return results, boards


def screenshot_sections(driver, out: Path, first: str = "significance-ranking", last: str = "cost-plot",
                        most_bytes: int = 480_000) -> Path:
    """A PNG of the page from figure ``first`` to the end of figure ``last`` (the report's ranking
    figures, robustness check and matched-compute section), scaled down until under ``most_bytes``."""
    import io

    from PIL import Image

    box = driver.execute_script(
        "const a = document.getElementById(arguments[0]).getBoundingClientRect();"
        "const b = document.getElementById(arguments[1]).getBoundingClientRect();"
        "return [a.top + window.scrollY - 60, b.bottom + window.scrollY + 10, document.body.scrollHeight];",
        first, last)
    driver.set_window_size(1280, int(box[2]) + 40)
    whole = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    crop = whole.crop((0, max(0, int(box[0])), whole.width, min(whole.height, int(box[1]))))
    scale = 1.0
    while True:
        image = crop.resize((int(crop.width * scale), int(crop.height * scale))) if scale < 1 else crop
        image.quantize(colors=128).save(out, optimize=True)
        if out.stat().st_size <= most_bytes or scale < 0.3:
            return out
        scale *= 0.85


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """The results folder with its pages, made once for both tests (read-only!)."""
    return make_results(tmp_path_factory.mktemp("report"))


def test_pages_are_written_self_contained(report) -> None:
    results, _ = report
    page = (results / "tiny" / "index.html").read_text()
    assert page.count("<img ") == page.count('src="data:image/png;base64,') >= len(FIGURES) + 3
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for section in ('id="leaderboard"', 'id="ranking"', 'id="per-case"', 'id="training"', 'id="predictions"',
                    'id="record"', 'id="matched"', "0.1.0+tree.test", "ci (5 epochs x 12 iterations, 2 folds)",
                    *(f'id="{f}"' for f in FIGURES), "scoring.missing: value", "counts as Dice 0.25",
                    "Kendall", "Pareto-optimal", "team_b 1", "torch "):
        assert section in page, section
    index = (results / "index.html").read_text()
    assert 'href="tiny/index.html"' in index and "Consensus over tasks" in index
    assert 'id="consensus-heatmap-crossval"' in index and 'id="consensus-heatmap-test"' in index
    markdown = (results / "tiny" / "leaderboard.md").read_text()
    assert "## Matched compute" in markdown and "Kendall's tau between schemes" in markdown
    assert "- environment: CPU " in markdown and "scoring.missing: value" in markdown


#: the ids of the figures on a task page (sections.ranking_section / matched_section), each checked in the browser
FIGURES = (*(f"{kind}-{css}" for css in ("ranking", "test-ranking")
             for kind in ("significance", "blob", "podium", "robustness-plot")), "cost-plot")


@pytest.mark.skipif(CHROMEDRIVER is None or CHROMIUM is None,
                    reason="needs Debian's chromium and chromium-driver (.ci/setup installs them)")
def test_report_in_headless_chromium(report, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    results, boards = report
    board = boards[0]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        for page in (results / "tiny" / "index.html", results / "index.html"):
            driver.get(page.as_uri())
            errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            assert not errors, errors
            widths = driver.execute_script(
                "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0);")
            assert all(w > 0 for w in widths), widths
            figures = FIGURES if page.parent.name == "tiny" else ("consensus-heatmap-crossval",
                                                                 "consensus-heatmap-test")
            for figure in figures:  # present, decoded, drawn at a size
                size = driver.execute_script(
                    "const i = document.getElementById(arguments[0]);"
                    "return i && i.complete ? [i.naturalWidth, i.naturalHeight] : null;", figure)
                assert size is not None and min(size) > 0, (figure, size)
            if page.parent.name == "tiny":
                assert len(widths) >= len(FIGURES) + 3  # and per-case Dice, training curves, overlay
                count = "return document.querySelectorAll(arguments[0]).length;"
                assert driver.execute_script(count, "table.leaderboard tbody tr") == len(board.rows)
                assert driver.execute_script(count, "table.ranking tbody tr") == len(board.ranking.rows)
                assert driver.execute_script(count, "table.test-ranking tbody tr") == 2
                assert driver.execute_script(count, "table.leaderboard tr.selected") == 1
                assert driver.execute_script(count, "table.jobs tbody tr") == 2
                assert driver.execute_script(count, "table.matched tbody tr") == 3
                assert driver.execute_script(count, "table.ranking-robustness tbody tr") == len(board.ranking.rows)
                height = driver.execute_script("return document.body.scrollHeight;")
                driver.set_window_size(1280, min(int(height) + 40, 6000))
                shot = tmp_path / "report-screenshot.png"
                assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
                print(f"report screenshot: {shot}")
                sections = screenshot_sections(driver, tmp_path / "report-sections.png")
                assert sections.stat().st_size > 10_000
                if os.environ.get("SELFUNET_UPDATE_SCREENSHOT") == "1":  # refresh the committed copies on purpose
                    shutil.copyfile(shot, REPO / "docs" / "images" / "report-screenshot.png")
                    shutil.copyfile(sections, REPO / "docs" / "images" / "report-sections.png")
            else:
                assert driver.execute_script("return document.querySelectorAll('table.tasks tbody tr').length;") == 2
                assert driver.execute_script(
                    "return document.querySelectorAll('table.consensus').length;") >= 1
    finally:
        driver.quit()
