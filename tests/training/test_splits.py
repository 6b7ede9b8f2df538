"""Cross-validation folds: coverage, determinism, editable file validation."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest

from selfunet.errors import SelfUNetError
from selfunet.training.splits import Fold, get_fold, load_or_create_splits, make_splits

CASES = [f"case_{i:03d}" for i in range(23)]


def test_every_case_in_exactly_one_validation_fold():
    folds = make_splits(CASES, 5, 12345)
    assert len(folds) == 5
    vals = [c for f in folds for c in f.val]
    assert sorted(vals) == sorted(CASES)
    for f in folds:
        assert set(f.train) | set(f.val) == set(CASES)
        assert not set(f.train) & set(f.val)
    # 23 = 5+5+5+4+4
    assert sorted(len(f.val) for f in folds) == [4, 4, 5, 5, 5]


def test_splits_depend_on_seed_not_on_input_order():
    a = make_splits(CASES, 5, 12345)
    b = make_splits(list(reversed(CASES)), 5, 12345)
    c = make_splits(CASES, 5, 7)
    assert a == b
    assert a != c


def test_fewer_cases_than_folds_gives_leave_one_out_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="selfunet.training.splits"):
        folds = make_splits(["b", "a", "c"], 5)
    assert len(folds) == 3
    assert sorted(f.val[0] for f in folds) == ["a", "b", "c"]
    assert all(len(f.train) == 2 for f in folds)
    assert "leave-one-out" in caplog.text


def test_single_case_rejected():
    with pytest.raises(SelfUNetError, match="at least 2"):
        make_splits(["only"], 5)


def test_file_created_then_reused_with_user_edits(tmp_path):
    path = tmp_path / "splits.json"
    folds = load_or_create_splits(path, CASES, 5, 12345)
    raw = json.loads(path.read_text())
    assert raw == [f.model_dump() for f in folds]
    # a user edit: a custom 2-fold split
    custom = [{"train": CASES[:10], "val": CASES[10:]}, {"train": CASES[10:], "val": CASES[:10]}]
    path.write_text(json.dumps(custom))
    again = load_or_create_splits(path, CASES, 5, 12345)
    assert again == [Fold(**c) for c in custom]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"train": ["case_000", "ghost"], "val": ["case_001"]}, "ghost"),
        ({"train": ["case_000", "case_001"], "val": ["case_001"]}, "both"),
        ({"train": ["case_000"]}, "keys"),
        ({"train": ["case_000"], "val": []}, "empty"),
    ],
)
def test_bad_user_splits_rejected_naming_the_file(tmp_path, entry, message):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(SelfUNetError, match=message) as info:
        load_or_create_splits(path, CASES)
    assert str(path) in str(info.value)


def test_unreadable_splits_file_rejected(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text("{not json")
    with pytest.raises(SelfUNetError, match=r"splits\.json"):
        load_or_create_splits(path, CASES)


def test_out_of_range_fold_rejected():
    folds = make_splits(CASES, 5)
    assert get_fold(folds, 4) is folds[4]
    with pytest.raises(SelfUNetError, match=r"fold 5 does not exist.*0\.\.4"):
        get_fold(folds, 5)
    with pytest.raises(SelfUNetError):
        get_fold(folds, -1)


@pytest.mark.oracle
def test_same_folds_as_reference_kfold(reference_python: str):
    """The reference splits sorted ids with sklearn's shuffled KFold; we match it fold by fold."""
    script = (
        "import json,sys; from sklearn.model_selection import KFold; import numpy as np\n"
        "keys=np.sort(json.loads(sys.argv[1]))\n"
        "out=[{'train':list(keys[a]),'val':list(keys[b])} for a,b in "
        "KFold(n_splits=5,shuffle=True,random_state=12345).split(keys)]\n"
        "print(json.dumps(out))"
    )
    run = subprocess.run([reference_python, "-c", script, json.dumps(CASES)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, f"the reference's KFold failed: {run.stderr[-2000:]}"
    expected = [Fold(**f) for f in json.loads(run.stdout)]
    assert make_splits(CASES, 5, 12345) == expected
