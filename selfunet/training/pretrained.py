"""Fine-tuning: start a network from another model's weights (``selfunet train --pretrained-weights``).

Every layer is copied except the segmentation heads, whose output channels follow the target
dataset's classes or regions and are therefore trained afresh (the reference does the same).
The source may be a selfunet checkpoint (``checkpoint_final.pt``: its ``network`` entry) or a
plain state dict (``fold_K.pt`` inside an exported model.zip). It is read with
``weights_only=True``: a weights file never runs code when it is opened.

A shape mismatch is an error naming the layer and both shapes, because silently skipping a layer
would train a different model than the user asked for; the usual cause is a plan with another
topology or another number of input channels (transfer the plan with ``selfunet plan --from-plan``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

#: parameters whose name starts with this are the per-dataset output layers, never transferred.
HEAD_PREFIX = "seg_heads."


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The network weights in ``path`` (a checkpoint's ``network`` entry or a bare state dict)."""
    path = Path(path)
    if not path.is_file():
        raise SelfUNetError(f"{path}: pretrained weights not found; give a checkpoint_final.pt or a state dict file.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SelfUNetError(
            f"{path}: cannot read pretrained weights with weights_only=True ({exc}); give a selfunet checkpoint "
            "or a torch.save'd state dict of tensors."
        ) from exc
    if isinstance(payload, dict) and isinstance(payload.get("network"), dict):
        payload = payload["network"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise SelfUNetError(f"{path}: not a state dict of tensors (nor a checkpoint holding one under 'network').")
    return payload


def load_pretrained_weights(network: nn.Module, path: Path) -> list[str]:
    """Copy every parameter and buffer of ``path`` except the segmentation heads into ``network``.

    Returns the names copied. Raises when a layer of the network is missing from the source or
    has another shape.
    """
    source = read_state_dict(path)
    target = network.state_dict()
    copied, problems = [], []
    for name, tensor in target.items():
        if name.startswith(HEAD_PREFIX):
            continue
        if name not in source:
            problems.append(f"layer '{name}' is missing from the pretrained weights")
            continue
        if tuple(source[name].shape) != tuple(tensor.shape):
            problems.append(
                f"layer '{name}' has shape {tuple(source[name].shape)} in the pretrained weights but "
                f"{tuple(tensor.shape)} in this network"
            )
            continue
        copied.append(name)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise SelfUNetError(
            f"{path}: the pretrained weights do not fit this plan's network: {shown}. Use the same topology and "
            "input channels (e.g. `selfunet plan WORK --from-plan OTHER/plan.json`)."
        )
    state = dict(target)
    state.update({name: source[name].to(target[name].dtype) for name in copied})
    network.load_state_dict(state)
    log.info("loaded %d pretrained tensors from %s (segmentation heads left at their initialisation)",
             len(copied), path)
    return copied
