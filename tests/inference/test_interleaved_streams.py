"""Slab streams of several models interleaved (an ensemble's members advance in turn) give each
model's own logits, and leave the caller's inference mode as it was."""

from __future__ import annotations

import torch
from torch import nn

from selfunet.inference.inference_config import InferenceConfig
from selfunet.inference.sliding_window import predict_probabilities, stream_logits


def test_two_interleaved_streams_equal_their_separate_runs() -> None:
    torch.manual_seed(0)
    nets = [nn.Conv3d(1, 3, 3, padding=1), nn.Conv3d(1, 3, 3, padding=1)]
    image = torch.randn(1, 40, 24, 24)
    config = InferenceConfig()
    alone = [torch.cat([logits[0] for _, _, logits in stream_logits([net], image, [8, 16, 16], 3, config)], dim=1)
             for net in nets]
    first, second = (stream_logits([net], image, [8, 16, 16], 3, config) for net in nets)
    together: list[list[torch.Tensor]] = [[], []]
    for (_, _, a), (_, _, b) in zip(first, second):
        assert not torch.is_inference_mode_enabled()  # the mode never leaks out of a step
        together[0].append(a[0])
        together[1].append(b[0])
    for mine, reference in zip(together, alone):
        assert torch.equal(torch.cat(mine, dim=1), reference)
    # a consumer outside inference mode may keep working with what it was handed
    assert predict_probabilities(nets, image, [8, 16, 16], 3, config).shape == (3, 40, 24, 24)
