"""Checkpoints hold tensors and plain values only and are read with ``weights_only=True``.

Checkpoints are written by jobs (inside containers, or in a work directory someone shared);
unpickling an object from one can run any code on the host, so such a file is refused.
"""

from __future__ import annotations

import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch

from selfunet.errors import SelfUNetError
from selfunet.runtime import load_checkpoint, plain_payload_problem, save_checkpoint


class Planted:
    """A pickled object whose unpickling would create a file: proof of code running on load."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


def test_checkpoint_with_a_pickled_object_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    planted = tmp_path / "code-ran"
    path = tmp_path / "checkpoint_final.pt"
    torch.save({"network": {"w": torch.zeros(2)}, "extra": Planted(planted)}, path)
    with pytest.raises(SelfUNetError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "refused" in message and "pickled" in message and "--restart" in message
    assert "a pickled " in message  # names what it found
    assert not planted.exists()
    torch.load(path, weights_only=False)  # what the host used to do: the object's code runs
    assert planted.exists()


class Settings:
    """A custom class a careless trainer might put in a payload."""

    lr = 0.01


def test_custom_class_instance_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"network": {}, "config": Settings()}, path)
    with pytest.raises(SelfUNetError, match=r"refused: .*a pickled \S*Settings"):
        load_checkpoint(path)


def test_corrupted_checkpoint_is_named_as_corrupted_not_as_hostile(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pt"
    path.write_bytes(b"\x80\x05garbage that is no checkpoint")
    with pytest.raises(SelfUNetError, match=r"cannot load checkpoint.*delete it and retrain or resume"):
        load_checkpoint(path)


def test_plain_checkpoint_round_trips(tmp_path: Path) -> None:
    payload = {"network": {"w": torch.arange(3.0)}, "epoch": 2, "ema": None, "plan": {"spacing": [1.0, 2.0]},
               "torch_rng": torch.get_rng_state(), "name": "3d_fullres", "done": True}
    save_checkpoint(tmp_path / "c.pt", payload)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["network"]["w"], payload["network"]["w"]) and loaded["plan"] == payload["plan"]


@pytest.mark.parametrize(("value", "where"), [
    (np.float64(0.5), "payload['ema'] is a numpy.float64"),
    (Path("x"), "payload['ema'] is a pathlib"),
    ({"a": np.int64(1)}, "payload['ema']['a'] is a numpy.int64"),
    ([1.0, np.random.default_rng(0)], "payload['ema'][1] is a numpy.random"),
])
def test_writer_refuses_values_weights_only_cannot_read(tmp_path: Path, value: object, where: str) -> None:
    assert where in (plain_payload_problem({"ema": value}) or "")
    with pytest.raises(SelfUNetError, match="would not load with weights_only"):
        save_checkpoint(tmp_path / "c.pt", {"ema": value})
    assert not list(tmp_path.iterdir())
