"""nnU-Net v2's networks (``PlainConvUNet``, ``ResidualEncoderUNet``) as our :class:`NetworkTopology`,
and their weights as our state dicts, both ways.

Architecture: the plans' ``architecture`` entry (class name + ``arch_kwargs``) is checked field by
field; anything our U-Net does not compute identically (another network class, batch norm, another
non-linearity or slope, convolutions without bias, bottleneck blocks, a stem of another width,
``nonlin_first``, squeeze-excitation, stochastic depth) is refused, naming the field.

Weights are matched by structure, not by name. nnU-Net's state dict lists every tensor of its
module tree in order, some of them twice: each ``ConvDropoutNormReLU`` also exposes its conv and
norm as ``all_modules.N`` and the decoder holds the encoder again as ``decoder.encoder``. Those
aliases are checked to equal the tensor they repeat and dropped; the rest falls into five parts of
the U-Net (stem, encoder stages, decoder stages, transposed convolutions, segmentation heads).
Each part is walked in order beside the same part of our network, and every pair must agree in
kind (weight or bias) and shape; a tensor left over on either side is an error, so every tensor
is used exactly once (:class:`WeightMapping` records the pairs).

The other direction names our tensors the way nnU-Net's module tree does (aliases included, as
the same tensor objects), so ``load_state_dict(strict=True)`` in nnU-Net accepts the file.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from selfunet.errors import SelfUNetError, quote
from selfunet.planning.plan_types import NetworkTopology

PLAIN_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESIDUAL_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
#: class names nnU-Net's plans use for the two (the old short names are its own backward compatibility).
CLASS_NAMES = {PLAIN_CLASS: "plain", "PlainConvUNet": "plain", RESIDUAL_CLASS: "residual_encoder",
               "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet": "residual_encoder",
               "ResidualEncoderUNet": "residual_encoder"}
_CONV = {2: "torch.nn.modules.conv.Conv2d", 3: "torch.nn.modules.conv.Conv3d"}
_NORM = {2: "torch.nn.modules.instancenorm.InstanceNorm2d", 3: "torch.nn.modules.instancenorm.InstanceNorm3d"}
_NONLIN = ("torch.nn.LeakyReLU", "torch.nn.modules.activation.LeakyReLU")
_KNOWN_KWARGS = {"n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
                 "n_blocks_per_stage", "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs",
                 "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "deep_supervision", "nonlin_first",
                 "block", "bottleneck_channels", "stem_channels", "return_skips", "pool", "stochastic_depth_p",
                 "squeeze_excitation", "squeeze_excitation_reduction_ratio"}


def _per_stage(value: Any, n: int, name: str, where: str) -> list:
    """nnU-Net broadcasts an int (or, for kernels/strides, an int per axis) to every stage."""
    if isinstance(value, (list, tuple)) and len(value) == n:
        return [list(v) if isinstance(v, (list, tuple)) else v for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * n
    raise SelfUNetError(f"{where}: arch_kwargs.{name} = {quote(value, 80)}; expected one entry per stage ({n}).")


def topology_from_architecture(architecture: Any, dimension: int, where: str) -> NetworkTopology:
    """A plans ``architecture`` entry as our topology; refuses what our U-Net cannot compute."""
    if not isinstance(architecture, dict) or not isinstance(architecture.get("arch_kwargs"), dict):
        raise SelfUNetError(f"{where}: 'architecture' must hold 'network_class_name' and 'arch_kwargs'.")
    class_name = architecture.get("network_class_name")
    kind = CLASS_NAMES.get(class_name) if isinstance(class_name, str) else None
    if kind is None:
        raise SelfUNetError(
            f"{where}: network class {quote(class_name, 120)} is not one selfunet can represent (PlainConvUNet or "
            "ResidualEncoderUNet of dynamic_network_architectures); a custom network cannot be imported.")
    kw = architecture["arch_kwargs"]
    unknown = sorted(set(kw) - _KNOWN_KWARGS)
    if unknown:
        raise SelfUNetError(f"{where}: arch_kwargs {', '.join(map(repr, unknown))} are not understood; refused.")

    def require(condition: bool, what: str) -> None:
        if not condition:
            raise SelfUNetError(f"{where}: {what}; selfunet's U-Net computes something else, so the model is refused.")

    n = kw.get("n_stages")
    require(isinstance(n, int) and not isinstance(n, bool) and 2 <= n <= 16, f"n_stages = {quote(n, 40)}")
    require(kw.get("conv_op") == _CONV[dimension], f"conv_op {quote(kw.get('conv_op'), 80)} (expected "
            f"{_CONV[dimension]} for a {dimension}D patch)")
    require(kw.get("norm_op") == _NORM[dimension], f"norm_op {quote(kw.get('norm_op'), 80)} (instance norm only)")
    norm_kwargs = kw.get("norm_op_kwargs") or {}
    require(isinstance(norm_kwargs, dict) and norm_kwargs.get("affine") is True
            and norm_kwargs.get("eps", 1e-5) == 1e-5 and not norm_kwargs.get("track_running_stats")
            and set(norm_kwargs) <= {"eps", "affine", "track_running_stats", "momentum"},
            f"norm_op_kwargs {quote(norm_kwargs, 80)} (affine, eps 1e-5)")
    require(kw.get("nonlin") in _NONLIN, f"nonlin {quote(kw.get('nonlin'), 80)} (LeakyReLU only)")
    nonlin_kwargs = kw.get("nonlin_kwargs") or {}
    require(isinstance(nonlin_kwargs, dict) and nonlin_kwargs.get("negative_slope", 0.01) == 0.01
            and set(nonlin_kwargs) <= {"inplace", "negative_slope"}, f"nonlin_kwargs {quote(nonlin_kwargs, 80)}")
    require(kw.get("conv_bias", True) is True, "conv_bias is false")
    require(not kw.get("nonlin_first", False), "nonlin_first is true")
    require(kw.get("pool", "conv") == "conv", f"pool {quote(kw.get('pool'), 40)} (strided convolutions only)")
    # dropout is the identity at inference; a model trained with it predicts like any other
    for name in ("stochastic_depth_p", "squeeze_excitation"):
        require(not kw.get(name), f"{name} = {quote(kw.get(name), 40)}")
    features = _per_stage(kw.get("features_per_stage"), n, "features_per_stage", where)
    kernels = _per_stage(kw.get("kernel_sizes"), n, "kernel_sizes", where)
    strides = _per_stage(kw.get("strides"), n, "strides", where)
    kernels = [k if isinstance(k, list) else [k] * dimension for k in kernels]
    strides = [s if isinstance(s, list) else [s] * dimension for s in strides]
    decoder = _per_stage(kw.get("n_conv_per_stage_decoder"), n - 1, "n_conv_per_stage_decoder", where)
    require(all(v == 1 for v in strides[0]), f"strides[0] = {strides[0]} (the first stage must not downsample)")
    values: dict[str, Any] = dict(dimension=dimension, features_per_stage=features, kernel_sizes=kernels,
                                  strides=strides, convs_per_stage_decoder=decoder)
    if kind == "plain":
        values["convs_per_stage_encoder"] = _per_stage(kw.get("n_conv_per_stage"), n, "n_conv_per_stage", where)
    else:
        blocks = _per_stage(kw.get("n_blocks_per_stage"), n, "n_blocks_per_stage", where)
        block = kw.get("block", "BasicBlockD")
        require(block is None or str(block).rsplit(".", 1)[-1] == "BasicBlockD", f"block {quote(block, 80)}")
        require(kw.get("bottleneck_channels") is None, "bottleneck_channels is set")
        require(kw.get("stem_channels") in (None, features[0]), f"stem_channels {kw.get('stem_channels')} differ from "
                f"features_per_stage[0] {features[0]}")
        values.update(architecture="residual_encoder", blocks_per_stage_encoder=blocks,
                      convs_per_stage_encoder=[2 * b for b in blocks])
    try:
        return NetworkTopology(**values)
    except ValueError as exc:  # pydantic's ValidationError: bounds and consistency
        raise SelfUNetError(f"{where}: the architecture does not make a valid U-Net: {exc}") from None


def architecture_from_topology(topology: NetworkTopology) -> dict:
    """Our topology as a plans ``architecture`` entry (nnU-Net builds the same network from it)."""
    d = topology.dimension
    kwargs: dict[str, Any] = {
        "n_stages": topology.num_stages, "features_per_stage": list(topology.features_per_stage),
        "conv_op": _CONV[d], "kernel_sizes": [list(k) for k in topology.kernel_sizes],
        "strides": [list(s) for s in topology.strides]}
    if topology.architecture == "residual_encoder":
        kwargs["n_blocks_per_stage"] = list(topology.blocks_per_stage_encoder or [])
    else:
        kwargs["n_conv_per_stage"] = list(topology.convs_per_stage_encoder)
    kwargs.update({
        "n_conv_per_stage_decoder": list(topology.convs_per_stage_decoder), "conv_bias": True,
        "norm_op": _NORM[d], "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}})
    return {"network_class_name": RESIDUAL_CLASS if topology.architecture == "residual_encoder" else PLAIN_CLASS,
            "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


# -- weights ----------------------------------------------------------------------------------------
#: the parts of the U-Net: nnU-Net's key prefix, ours.
PARTS = (("encoder.stem.", "stem."), ("encoder.stages.", "encoder."), ("decoder.stages.", "decoder."),
         ("decoder.transpconvs.", "upsample."), ("decoder.seg_layers.", "seg_heads."))


@dataclass
class WeightMapping:
    """Which nnU-Net tensor filled which of ours (``pairs``), and the aliases checked and dropped."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)


def _module_twin(key: str, canonical: Mapping[str, torch.Tensor], tensor: torch.Tensor) -> str:
    """The conv or norm tensor that ``...<module>.all_modules.N.<leaf>`` repeats (same module, leaf and
    values); the first candidate when none is equal, so the message names it."""
    prefix, _, rest = key.partition(".all_modules.")
    leaf = rest.rsplit(".", 1)[-1]
    candidates = [k for k in canonical if k.startswith(prefix + ".") and k.count(".") == prefix.count(".") + 2
                  and k.rsplit(".", 1)[-1] == leaf]
    equal = [k for k in candidates if canonical[k].shape == tensor.shape and torch.equal(canonical[k], tensor)]
    return (equal or candidates or [prefix + ".?"])[0]


def state_from_nnunet(weights: Mapping[str, torch.Tensor], network: torch.nn.Module,
                      where: str) -> tuple[dict[str, torch.Tensor], WeightMapping]:
    """nnU-Net's ``network_weights`` as a state dict of ``network`` (our U-Net), matched by structure."""
    mapping = WeightMapping()
    canonical: dict[str, torch.Tensor] = {}
    for key in weights:
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            raise SelfUNetError(f"{where}: '{key}' is a running statistic (batch norm); refused.")
    for key, tensor in weights.items():
        if not (key.startswith("decoder.encoder.") or ".all_modules." in key):
            canonical[key] = tensor
    for key, tensor in weights.items():
        if key.startswith("decoder.encoder."):
            target = key.removeprefix("decoder.")
        elif ".all_modules." in key:
            target = _module_twin(key, canonical, tensor)
        else:
            continue
        if target not in weights or weights[target].shape != tensor.shape or not torch.equal(weights[target], tensor):
            raise SelfUNetError(f"{where}: '{key}' should repeat '{target}' (the same module seen twice) but differs; "
                                "the checkpoint is damaged or from another network.")
        mapping.aliases[key] = target
    ours = network.state_dict()
    state: dict[str, torch.Tensor] = {}
    for theirs_prefix, ours_prefix in PARTS:
        theirs = [(k, t) for k, t in canonical.items() if k.startswith(theirs_prefix)]
        mine = [(k, t) for k, t in ours.items() if k.startswith(ours_prefix)]
        for index in range(max(len(theirs), len(mine))):
            if index >= len(theirs) or index >= len(mine):
                extra = theirs[index][0] if index < len(theirs) else mine[index][0]
                side = "the checkpoint has" if index < len(theirs) else "the plan's network needs"
                raise SelfUNetError(
                    f"{where}: {side} more tensors in '{theirs_prefix.rstrip('.')}' ({len(theirs)} against "
                    f"{len(mine)}), first extra '{extra}'; the weights do not belong to the plans' network.")
            (their_key, tensor), (our_key, expected) = theirs[index], mine[index]
            if their_key.rsplit(".", 1)[-1] != our_key.rsplit(".", 1)[-1] or tensor.shape != expected.shape:
                raise SelfUNetError(
                    f"{where}: tensor {index + 1} of '{theirs_prefix.rstrip('.')}' is '{their_key}' "
                    f"{tuple(tensor.shape)}, where the plans' network has '{our_key}' {tuple(expected.shape)}; "
                    "the weights do not belong to the plans' network.")
            state[our_key] = tensor.detach().to(expected.dtype).contiguous()
            mapping.pairs.append((their_key, our_key))
    unmatched = sorted(set(canonical) - {k for k, _ in mapping.pairs})
    if unmatched:
        raise SelfUNetError(f"{where}: tensor(s) {', '.join(map(repr, unmatched[:3]))} belong to no part of the U-Net "
                            "(stem, encoder, decoder, transposed convolutions, segmentation heads); refused.")
    missing = sorted(set(ours) - set(state))
    if missing:
        raise SelfUNetError(f"{where}: the checkpoint has nothing for {', '.join(missing[:3])}; refused.")
    return state, mapping


def _conv_norm(prefix: str, ours: str, state: Mapping[str, torch.Tensor], out: dict, bias: bool = True) -> None:
    """A ``ConvDropoutNormReLU`` at ``prefix`` (conv + norm, and its ``all_modules`` aliases)."""
    names = [("conv.weight", "all_modules.0.weight")] + ([("conv.bias", "all_modules.0.bias")] if bias else [])
    names += [("norm.weight", "all_modules.1.weight"), ("norm.bias", "all_modules.1.bias")]
    for leaf, alias in names:
        out[f"{prefix}.{leaf}"] = state[f"{ours}.{leaf}"]
        out[f"{prefix}.{alias}"] = state[f"{ours}.{leaf}"]


def state_to_nnunet(state: Mapping[str, torch.Tensor], topology: NetworkTopology) -> OrderedDict:
    """Our U-Net's state dict under nnU-Net's names, aliases included (same tensor objects)."""
    out: dict[str, torch.Tensor] = {}
    encoder: dict[str, torch.Tensor] = {}
    if topology.architecture == "residual_encoder":
        _conv_norm("encoder.stem.convs.0", "stem", state, encoder)
        for s, blocks in enumerate(topology.blocks_per_stage_encoder or []):
            for b in range(blocks):
                mine, theirs = f"encoder.{s}.{b}", f"encoder.stages.{s}.blocks.{b}"
                _conv_norm(f"{theirs}.conv1", f"{mine}.conv1", state, encoder)
                _conv_norm(f"{theirs}.conv2", f"{mine}.conv2", state, encoder)
                projection = [k for k in state if k.startswith(f"{mine}.shortcut.") and k.endswith(".conv.weight")]
                if projection:  # shortcut.0 = the 1x1 conv, or shortcut.1 after an average pool
                    index = projection[0].removeprefix(f"{mine}.shortcut.").split(".")[0]
                    _conv_norm(f"{theirs}.skip.{index}", f"{mine}.shortcut.{index}", state, encoder, bias=False)
    else:
        for s, convs in enumerate(topology.convs_per_stage_encoder):
            for b in range(convs):
                _conv_norm(f"encoder.stages.{s}.0.convs.{b}", f"encoder.{s}.{b}", state, encoder)
    out.update(encoder)
    out.update({f"decoder.{k}": v for k, v in encoder.items()})
    for i, convs in enumerate(topology.convs_per_stage_decoder):
        for b in range(convs):
            _conv_norm(f"decoder.stages.{i}.convs.{b}", f"decoder.{i}.{b}", state, out)
    for i in range(topology.num_stages - 1):
        for leaf in ("weight", "bias"):
            out[f"decoder.transpconvs.{i}.{leaf}"] = state[f"upsample.{i}.{leaf}"]
    for i in range(topology.num_stages - 1):
        for leaf in ("weight", "bias"):
            out[f"decoder.seg_layers.{i}.{leaf}"] = state[f"seg_heads.{i}.{leaf}"]
    used = {id(v) for v in out.values()}
    left = [k for k, v in state.items() if id(v) not in used]
    if left:  # a bug here, never the user's doing: every tensor must travel
        raise SelfUNetError(f"state_to_nnunet: no nnU-Net name for {', '.join(left[:3])}.")
    return OrderedDict(out)
