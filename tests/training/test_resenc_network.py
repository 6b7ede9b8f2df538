"""The residual-encoder U-Net: shapes, the planner's estimate, topology checks, and (oracle) the
reference's ResidualEncoderUNet's parameter and feature-map counts for the same topologies."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from selfunet.errors import SelfUNetError
from selfunet.planning.presets import planner_settings
from selfunet.planning.topology import derive_topology, estimate_feature_map_elements
from selfunet.training.network import build_network, count_parameters, validate_topology
from selfunet.training.resenc_network import ResidualBlock

RESENC = planner_settings("resenc-m")
#: the same rules with narrow stages, for tests that run the network on real tensors
NARROW = planner_settings("resenc-m", base_features=4)

#: (spacing, patch, input channels, classes): 2D, 3D isotropic, 3D anisotropic (1-wide kernels,
#: in-plane pooling first), a deep 2D one (stages beyond the block table's 6 -> capped features)
CASES = [
    ((1.0, 1.0), (160, 192), 1, 3),
    ((1.0, 1.0, 1.0), (64, 64, 64), 2, 2),
    ((3.6, 0.62, 0.62), (20, 160, 160), 2, 3),
    ((5.0, 0.8, 0.8), (40, 192, 160), 1, 4),
    ((0.5, 0.5), (512, 448), 4, 4),
]


def _topology(spacing, patch, settings=RESENC):
    return derive_topology(spacing, patch, settings, len(spacing))


@pytest.mark.parametrize(("spacing", "patch", "channels", "classes"), CASES)
def test_estimate_counts_exactly_the_modules_outputs(spacing, patch, channels, classes):
    topology, padded = _topology(spacing, patch)
    assert topology.architecture == "residual_encoder"
    assert topology.blocks_per_stage_encoder == [[1, 3, 4, 6][min(i, 3)] for i in range(topology.num_stages)]
    assert topology.convs_per_stage_decoder == [1] * (topology.num_stages - 1)
    with torch.device("meta"):
        net = build_network(topology, channels, classes)
    assert net.count_feature_map_elements(padded) == estimate_feature_map_elements(topology, padded, classes)


def test_forward_shapes_and_blocks_start_as_identity():
    topology, _ = _topology((1.0, 1.0, 1.0), (16, 16, 16), NARROW)
    net = build_network(topology, 2, 3)
    outputs = net(torch.randn(2, 2, 16, 16, 16))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 16, 16, 16), (2, 3, 8, 8, 8)]
    blocks = [m for m in net.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == sum(topology.blocks_per_stage_encoder)
    # a block whose shortcut is the identity maps a non-negative input to itself at initialisation
    plain = next(b for b in blocks if b.shortcut is None)
    x = torch.rand(1, plain.conv1.conv.in_channels, 4, 4, 4)
    assert torch.allclose(plain(x.clone()), x)


def test_training_step_reaches_every_residual_weight():
    topology, _ = _topology((1.0, 1.0), (32, 32), NARROW)
    net = build_network(topology, 1, 2)
    loss = sum(o.mean() for o in net(torch.randn(2, 1, 32, 32)))
    loss.backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert missing == []


def test_inconsistent_residual_topology_rejected():
    topology, _ = _topology((1.0, 1.0), (64, 64))
    bad_blocks = topology.model_copy(update={"blocks_per_stage_encoder": topology.blocks_per_stage_encoder[:-1]})
    with pytest.raises(SelfUNetError, match="blocks_per_stage_encoder"):
        validate_topology(bad_blocks)
    bad_convs = topology.model_copy(update={"convs_per_stage_encoder": [2] * topology.num_stages})
    with pytest.raises(SelfUNetError, match="twice"):
        validate_topology(bad_convs)
    plain_with_blocks = topology.model_copy(update={"architecture": "plain"})
    with pytest.raises(SelfUNetError, match="only for architecture"):
        validate_topology(plain_with_blocks)


_REFERENCE = """
import json, sys
from torch import nn
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
out = []
for c in json.loads(sys.argv[1]):
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if c["dim"] == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    n = len(c["f"])
    net = ResidualEncoderUNet(c["channels"], n, c["f"], conv, c["k"], c["s"], c["blocks"], c["classes"],
                              c["dec"], conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                              nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    out.append([sum(p.numel() for p in net.parameters()), int(net.compute_conv_feature_map_size(c["p"]))])
print(json.dumps(out))
"""


@pytest.mark.oracle
def test_same_parameters_and_feature_maps_as_the_reference_residual_unet(reference_python):
    """One reference process builds ResidualEncoderUNet for every case; counts must be equal."""
    ours, configs = [], []
    for spacing, patch, channels, classes in CASES:
        topology, padded = _topology(spacing, patch)
        configs.append({"dim": topology.dimension, "f": topology.features_per_stage, "k": topology.kernel_sizes,
                        "s": topology.strides, "blocks": topology.blocks_per_stage_encoder,
                        "dec": topology.convs_per_stage_decoder, "channels": channels, "classes": classes,
                        "p": padded})
        with torch.device("meta"):
            net = build_network(topology, channels, classes)
        ours.append([count_parameters(net), net.count_feature_map_elements(padded)])
    run = subprocess.run([reference_python, "-c", _REFERENCE, json.dumps(configs)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    reference = json.loads(run.stdout.strip().splitlines()[-1])
    assert ours == reference
    assert all(math.prod(c["p"]) > 0 for c in configs)
