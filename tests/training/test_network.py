"""The U-Net template: shapes, deep supervision, self-measurement vs the planner's estimate."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import NetworkTopology, PlannerSettings
from selfunet.planning.topology import derive_topology, estimate_feature_map_elements
from selfunet.training.network import build_network, count_parameters, memory_format_for, to_channels_last

SETTINGS = PlannerSettings()


def _topology(spacing, patch, dim):
    topology, padded = derive_topology(spacing, patch, SETTINGS, dim)
    return topology, padded


def _small(dim: int, strides, features=(4, 8, 16, 16), kernels=None) -> NetworkTopology:
    n = len(strides)
    return NetworkTopology(
        dimension=dim,
        features_per_stage=list(features[:n]),
        kernel_sizes=kernels or [[3] * dim] * n,
        strides=strides,
        convs_per_stage_encoder=[2] * n,
        convs_per_stage_decoder=[2] * (n - 1),
    )


ISO_3D = _small(3, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
ANISO_3D = _small(
    3, [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]], kernels=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]
)
PLAIN_2D = _small(2, [[1, 1], [2, 2], [2, 2]])


@pytest.mark.parametrize(
    ("topology", "patch"),
    [(ISO_3D, (16, 16, 16)), (ANISO_3D, (4, 24, 32)), (PLAIN_2D, (20, 28))],
)
def test_deep_supervision_outputs_full_resolution_first(topology, patch):
    net = build_network(topology, in_channels=2, num_classes=3)
    outputs = net(torch.randn(2, 2, *patch))
    assert isinstance(outputs, list)
    assert len(outputs) == topology.num_stages - 1
    expected = list(patch)
    for s, out in enumerate(outputs):
        expected = [e // t for e, t in zip(expected, topology.strides[s])]
        assert out.shape == (2, 3, *expected)
    sizes = [math.prod(o.shape[2:]) for o in outputs]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]


def test_without_deep_supervision_returns_one_full_resolution_tensor():
    net = build_network(ISO_3D, in_channels=1, num_classes=2, deep_supervision=False)
    out = net(torch.randn(1, 1, 16, 16, 16))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 2, 16, 16, 16)
    net.deep_supervision = True
    with torch.no_grad():
        ds = net(torch.randn(1, 1, 16, 16, 16))
    assert isinstance(ds, list) and len(ds) == 3


@pytest.mark.parametrize(
    ("spacing", "patch", "dim"),
    [
        ((1.0, 1.0), (160, 192), 2),  # 2D
        ((1.0, 1.0, 1.0), (64, 64, 64), 3),  # 3D isotropic
        ((3.0, 0.7, 0.7), (20, 96, 112), 3),  # 3D anisotropic (kernel 1 out of plane at first)
        ((1.5, 0.8, 0.8), (48, 64, 80), 3),  # demo-like
        ((5.0, 0.5, 0.5), (10, 200, 180), 3),  # strongly anisotropic, odd sizes before padding
    ],
)
def test_measured_feature_maps_equal_the_planner_estimate(spacing, patch, dim):
    topology, padded = _topology(spacing, patch, dim)
    for num_classes in (2, 4):
        with torch.device("meta"):  # no weights needed to measure shapes; keeps the test fast
            net = build_network(topology, in_channels=1, num_classes=num_classes)
        measured = net.count_feature_map_elements(padded)
        assert measured == estimate_feature_map_elements(topology, padded, num_classes)
        assert measured > 0


def test_handmade_topologies_match_the_estimate_too():
    for topology, patch in ((ISO_3D, (16, 16, 16)), (ANISO_3D, (4, 24, 32)), (PLAIN_2D, (20, 28))):
        net = build_network(topology, 3, 5)
        assert net.count_feature_map_elements(patch) == estimate_feature_map_elements(topology, patch, 5)


def test_measuring_needs_no_real_forward_and_leaves_model_untouched():
    topology, padded = _topology((1.0, 1.0, 1.0), (128, 128, 128), 3)
    net = build_network(topology, 1, 3)
    before = [p.detach().clone() for p in net.parameters()][:3]
    net.count_feature_map_elements(padded)  # would need GBs if run for real
    net.conv_flops(padded)
    assert all(torch.equal(a, b) for a, b in zip(before, list(net.parameters())[:3]))
    assert next(net.parameters()).device.type == "cpu"


def test_conv_flops_of_a_single_conv_layer_network():
    # 2 stages, 1 conv each: count by hand
    topo = NetworkTopology(
        dimension=2, features_per_stage=[2, 4], kernel_sizes=[[3, 3], [3, 3]], strides=[[1, 1], [2, 2]],
        convs_per_stage_encoder=[1, 1], convs_per_stage_decoder=[1],
    )
    net = build_network(topo, in_channels=1, num_classes=2, deep_supervision=False)
    h, w = 8, 8
    expected = 2 * (
        h * w * 2 * 1 * 9  # enc0: 1 -> 2
        + (h // 2) * (w // 2) * 4 * 2 * 9  # enc1 strided: 2 -> 4
        + h * w * 2 * 4 * 4 // 4 * 1  # transposed 2x2: (h/2*w/2 inputs) * 4 in * 2 out * 4 taps
        + h * w * 2 * 4 * 9  # dec conv: 4 -> 2
        + h * w * 2 * 2  # seg head 1x1: 2 -> 2
    )
    assert net.conv_flops((h, w)) == expected


def test_conv_flops_grow_with_deep_supervision_heads():
    net = build_network(ISO_3D, 1, 3)
    assert net.conv_flops((16, 16, 16), deep_supervision=True) > net.conv_flops((16, 16, 16), deep_supervision=False)


def test_parameter_count_matches_the_template():
    net = build_network(PLAIN_2D, in_channels=1, num_classes=2)
    f = PLAIN_2D.features_per_stage  # 4, 8, 16

    def block(cin, cout, k=9):
        return cin * cout * k + cout + 2 * cout  # conv weight + bias + affine norm

    expected = block(1, f[0]) + block(f[0], f[0]) + block(f[0], f[1]) + block(f[1], f[1])
    expected += block(f[1], f[2]) + block(f[2], f[2])
    for below, skip in ((2, 1), (1, 0)):
        expected += f[below] * f[skip] * 4 + f[skip]  # transposed conv 2x2
        expected += block(2 * f[skip], f[skip]) + block(f[skip], f[skip])
        expected += f[skip] * 2 + 2  # seg head
    assert count_parameters(net) == expected


def test_planned_3d_network_has_a_plausible_size():
    topology, _ = _topology((1.0, 1.0, 1.0), (128, 128, 128), 3)
    # the reference's 6-stage 3D U-Net (32..320 features) has ~31M parameters
    assert 20e6 < count_parameters(build_network(topology, 1, 3)) < 45e6


def test_weights_initialised_he_and_biases_zero():
    net = build_network(ISO_3D, 1, 2)
    conv = net.encoder[1][0].conv
    assert torch.count_nonzero(conv.bias) == 0
    fan_in = conv.in_channels * math.prod(conv.kernel_size)
    expected_std = math.sqrt(2 / (1 + 0.01**2) / fan_in)
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.15)


@pytest.mark.parametrize(("topology", "patch"), [(ISO_3D, (16, 16, 16)), (PLAIN_2D, (20, 28))])
def test_channels_last_gives_the_same_result(topology, patch):
    torch.manual_seed(0)
    net = build_network(topology, 1, 3, deep_supervision=False).eval()
    x = torch.randn(2, 1, *patch)
    with torch.no_grad():
        reference = net(x)
        fmt = memory_format_for(topology.dimension)
        to_channels_last(net)
        assert net.encoder[0][0].conv.weight.is_contiguous(memory_format=fmt)
        out = net(x.contiguous(memory_format=fmt))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_forward_backward_runs_on_cpu():
    net = build_network(ISO_3D, 1, 2)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = net(x)
    assert outputs[0].dtype == torch.bfloat16
    sum(o.float().mean() for o in outputs).backward()
    assert net.encoder[0][0].conv.weight.grad is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strides": [[1, 1], [2, 2]]}, "strides"),
        ({"convs_per_stage_decoder": [2, 2]}, "convs_per_stage_decoder"),
        ({"kernel_sizes": [[3, 3, 3], [3, 3], [3, 3, 3], [3, 3, 3]]}, r"kernel_sizes\[1\]"),
        ({"strides": [[2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]}, r"strides\[0\]"),
    ],
)
def test_inconsistent_topology_rejected(change, message):
    bad = ISO_3D.model_copy(update=change)
    with pytest.raises(SelfUNetError, match=message):
        build_network(bad, 1, 2)


def test_wrong_patch_dimension_rejected():
    net = build_network(ISO_3D, 1, 2)
    with pytest.raises(SelfUNetError, match="patch_size"):
        net.count_feature_map_elements((16, 16))


_REF_SCRIPT = """
import json, sys, torch
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet
torch.set_default_device("meta")  # shapes and counts only: no weight memory or init
out = []
for c in json.loads(sys.argv[1]):
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if c["dim"] == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    net = PlainConvUNet(1, len(c["f"]), c["f"], conv, c["k"], c["s"], 2, c["classes"], 2, conv_bias=True,
                        norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                        nonlin_kwargs={"inplace": True}, deep_supervision=False)
    out.append([sum(p.numel() for p in net.parameters()), int(net.compute_conv_feature_map_size(c["p"]))])
print(json.dumps(out))
"""
ORACLE_CASES = [((3.0, 0.7, 0.7), (20, 96, 112), 3), ((1.0, 1.0), (160, 192), 2), ((1.0, 1.0, 1.0), (64, 64, 64), 3)]


@pytest.mark.oracle
def test_same_parameters_and_feature_maps_as_the_reference_network(reference_python: str) -> None:
    """Same template as the reference's plain U-Net: equal parameter count and activation count
    (every case in one reference process)."""
    cases = []
    for spacing, patch, dim in ORACLE_CASES:
        topology, padded = _topology(spacing, patch, dim)
        cases.append((topology, padded, {"dim": dim, "f": topology.features_per_stage, "k": topology.kernel_sizes,
                                         "s": topology.strides, "classes": 3, "p": padded}))
    run = subprocess.run([reference_python, "-c", _REF_SCRIPT, json.dumps([c for _, _, c in cases])],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"the reference network failed: {run.stderr[-2000:]}"
    for (topology, padded, _), (ref_params, ref_maps) in zip(cases, json.loads(run.stdout), strict=True):
        with torch.device("meta"):
            net = build_network(topology, 1, 3)
        assert count_parameters(net) == ref_params, topology
        assert net.count_feature_map_elements(padded) == ref_maps, topology
