"""Fine-tuning: every layer but the segmentation heads comes from the pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import NetworkTopology
from selfunet.training.network import build_network
from selfunet.training.pretrained import load_pretrained_weights

TOPOLOGY = NetworkTopology(
    dimension=3, features_per_stage=[4, 8, 16], kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
    strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]], convs_per_stage_encoder=[2, 2, 2], convs_per_stage_decoder=[2, 2],
)


def test_all_layers_but_the_heads_are_loaded_from_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_network(TOPOLOGY, 2, 3)
    torch.save({"format": "selfunet-checkpoint-1", "network": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    torch.manual_seed(1)
    target = build_network(TOPOLOGY, 2, 5)  # another dataset: 5 outputs instead of 3
    heads_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("seg_heads.")}
    copied = load_pretrained_weights(target, tmp_path / "ckpt.pt")
    after = target.state_dict()
    assert copied and not any(name.startswith("seg_heads.") for name in copied)
    for name, tensor in source.state_dict().items():
        if name.startswith("seg_heads."):
            assert torch.equal(after[name], heads_before[name])  # left at the new initialisation
        else:
            assert torch.equal(after[name], tensor), name


def test_a_plain_state_dict_works_too(tmp_path: Path) -> None:
    source = build_network(TOPOLOGY, 1, 2)
    torch.save(source.state_dict(), tmp_path / "fold_0.pt")
    target = build_network(TOPOLOGY, 1, 2)
    load_pretrained_weights(target, tmp_path / "fold_0.pt")
    assert torch.equal(next(iter(target.encoder.parameters())), next(iter(source.encoder.parameters())))


def test_shape_mismatch_names_the_layer(tmp_path: Path) -> None:
    torch.save(build_network(TOPOLOGY, 2, 3).state_dict(), tmp_path / "two_channels.pt")
    with pytest.raises(SelfUNetError, match=r"layer 'encoder\.0\.[^']*weight' has shape \(4, 2, 1, 3, 3\)"):
        load_pretrained_weights(build_network(TOPOLOGY, 1, 3), tmp_path / "two_channels.pt")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"network": {"x": object()}}, tmp_path / "evil.pt")
    with pytest.raises(SelfUNetError, match="weights_only"):
        load_pretrained_weights(build_network(TOPOLOGY, 1, 2), tmp_path / "evil.pt")
