"""A battery of broken datasets through the real command line (`selfunet check`, then `selfunet run`).

Each case builds the tiny valid dataset of tests/data/test_check.py (real NIfTI files), breaks it
in one way that test_check.py does not cover (bytes that are not UTF-8, wrong JSON types in every
key, rich markup and huge values in names, unsupported endings, empty and misplaced files), and
asserts: exit code 1, no traceback, and a message that names the file (or case) and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_check import descriptor_edit, make_msd, make_v2
from typer.testing import CliRunner

from selfunet.cli import app


def _raw(root: Path, data: bytes) -> None:
    (root / "dataset.json").write_bytes(data)


def _set(key: str, value) -> Callable[[Path], None]:
    return lambda root: descriptor_edit(root, lambda raw: raw.__setitem__(key, value))


def _training(i: int, entry) -> Callable[[Path], None]:
    def change(raw: dict) -> None:
        raw["training"][i] = entry

    return lambda root: descriptor_edit(root, change)


def _latin1_name(root: Path) -> None:
    text = (root / "dataset.json").read_text().replace('"name": "Tiny"', '"name": "Tiny caf\u00e9"')
    _raw(root, text.encode("latin-1"))


def _markup_name(root: Path) -> None:
    _training(1, {"image": "./imagesTr/[red]x.nii.gz", "label": "./labelsTr/case_001.nii.gz"})(root)


def _folder_as_image(root: Path) -> None:
    (root / "imagesTr" / "case_001.nii.gz").unlink()
    (root / "imagesTr" / "case_001.nii.gz").mkdir()


# (id, layout, how to break it, the file the message names, words (problem and fix) it must hold)
CASES: list[tuple[str, str, Callable[[Path], None], str, list[str]]] = [
    ("latin1-bytes", "msd", _latin1_name, "dataset.json", ["not UTF-8 text", "line 2", "save it as UTF-8"]),
    ("binary-garbage", "msd", lambda r: _raw(r, b"\x89PNG\r\n\x1a\n\xff\x00" * 30), "dataset.json",
     ["not UTF-8 text", "save it as UTF-8"]),
    ("top-level-list", "msd", lambda r: _raw(r, b"[1, 2, 3]"), "dataset.json",
     ["expected a JSON object at the top level, got a list", "write it as"]),
    ("deep-nesting", "msd", lambda r: _raw(r, b"[" * 100_000 + b"]" * 100_000), "dataset.json",
     ["nested too deeply", "fix the file"]),
    ("empty-file", "msd", lambda r: _raw(r, b""), "dataset.json", ["not valid JSON", "line 1", "fix the file"]),
    ("training-entry-string", "msd", _training(0, "./imagesTr/case_000.nii.gz"), "dataset.json",
     ["training entry 0", "must be an object with 'image' and 'label'", "e.g."]),
    ("training-image-number", "msd", _training(1, {"image": 7, "label": "./labelsTr/case_001.nii.gz"}),
     "dataset.json", ["training entry 1", "'image': 7", "e.g."]),
    ("training-label-empty", "msd", _training(2, {"image": "./imagesTr/case_002.nii.gz", "label": ""}),
     "dataset.json", ["training entry 2", "must be an object with 'image' and 'label'"]),
    ("training-not-list", "msd", _set("training", {"a": 1}), "dataset.json",
     ["'training' must be a list [...], got a dict", "fix the value"]),
    ("modality-list", "msd", _set("modality", ["T1", "T2"]), "dataset.json",
     ["'modality' must be an object", "got a list", "fix the value"]),
    ("modality-names", "msd", _set("modality", {"a": "T1", "b": "T2"}), "dataset.json",
     ["keys of 'modality' must be integers as strings", '{"0": "CT"}']),
    ("modality-gap", "msd", _set("modality", {"0": "T1", "2": "T2"}), "dataset.json",
     ["keys of 'modality' must be 0, 1, 2", "[0, 2]", "renumber them"]),
    ("labels-list", "msd", _set("labels", ["background", "organ"]), "dataset.json",
     ["'labels' must be an object", "got a list"]),
    ("no-background", "msd", _set("labels", {"1": "organ", "2": "lesion"}), "dataset.json",
     ["must declare the background as 0", '"0": "background"']),
    ("labels-gap", "msd", _set("labels", {"0": "background", "1": "organ", "3": "lesion"}), "dataset.json",
     ["consecutive 0..N-1", "[0, 1, 3]", "renumber them"]),
    ("msd-label-names-as-keys", "msd", _set("labels", {"background": "0", "organ": "1"}), "dataset.json",
     ["MSD 'labels' maps integer values", '"1": "liver"']),
    ("v2-region-label", "nnunetv2", _set("labels", {"background": 0, "organ": [1, 2], "lesion": 2}),
     "dataset.json", ["declared as regions need 'regions_class_order'", "painted in that order"]),
    ("v2-bool-label", "nnunetv2", _set("labels", {"background": 0, "organ": True, "lesion": 2}),
     "dataset.json", ["label 'organ' maps to True", "give one integer value, or a list"]),
    ("v2-huge-label-name", "nnunetv2", _set("labels", {"background": 0, "L" * 20_000: "x", "lesion": 2}),
     "dataset.json", ["characters)", "give one integer value, or a list"]),
    ("v2-no-file-ending", "nnunetv2", lambda r: descriptor_edit(r, lambda raw: raw.pop("file_ending")),
     "dataset.json", ["missing key 'file_ending'", "add it"]),
    ("v2-png-ending", "nnunetv2", _set("file_ending", ".png"), "dataset.json",
     ["unsupported image format", ".nii.gz"]),
    ("test-entry-number", "msd", _set("test", [5]), "dataset.json", ["test entry 0 (5)", "must be a path string"]),
    ("png-training-image", "msd", _training(0, {"image": "./imagesTr/case_000.png",
                                                "label": "./labelsTr/case_000.nii.gz"}), "dataset.json",
     ["unsupported image format", "use one of"]),
    ("markup-file-name", "msd", _markup_name, "[red]x.nii.gz", ["image file missing"]),
    ("empty-image-file", "msd", lambda r: (r / "imagesTr" / "case_001.nii.gz").write_bytes(b""),
     "case_001.nii.gz", ["case_001", "unreadable"]),
    ("folder-as-image", "msd", _folder_as_image, "case_001.nii.gz", ["case_001", "image file missing"]),
]


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "1000"})
    assert "Traceback" not in result.output, result.output[-3000:]
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.mark.parametrize(("layout", "breaker", "file_name", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_broken_dataset_is_a_clean_message(tmp_path: Path, layout: str, breaker, file_name: str,
                                           words: list[str]) -> None:
    root = (make_msd if layout == "msd" else make_v2)(tmp_path / "ds")
    breaker(root)
    result = invoke("check", str(root), "-p", "1")
    assert result.exit_code == 1, result.output
    assert file_name in result.output
    for word in words:
        assert word in result.output, (word, result.output[-3000:])
    assert "fix" in result.output.lower() or "edit dataset.json" in result.output
    assert len(result.output) < 20_000  # huge values are quoted, not dumped
    # the whole pipeline stops at the same place, just as cleanly, before writing anything
    run = invoke("run", str(root), "--work", str(tmp_path / "work"), "--budget", "ci", "-p", "1")
    assert run.exit_code == 1, run.output
    assert not (tmp_path / "work" / "fingerprint.json").exists()


def test_every_case_breaks_a_dataset_that_was_clean(tmp_path: Path) -> None:
    """The builders make valid datasets, so each case above fails for its own reason."""
    for make in (make_msd, make_v2):
        root = make(tmp_path / make.__name__)
        assert invoke("check", str(root), "-p", "1").exit_code == 0
        assert json.loads((root / "dataset.json").read_text())
