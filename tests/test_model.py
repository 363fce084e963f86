"""labkit.model: the seed's defect switches, depth, shapes, cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.config import TrainConfig
from labkit.model import BasicBlock, ResNet, build_model, count_params, flops_per_image, weight_layers


@pytest.mark.parametrize(
    "lays, extra, blocks, layers",
    [
        ((2, 2, 2, 2), True, [3] * 4, 26),
        ((2, 2, 2, 2), False, [2] * 4, 18),
        ((3, 3, 3, 3), True, [4] * 4, 34),
        ((3, 3, 3, 3), False, [3] * 4, 26),
        ((1, 2, 3, 1), False, [1, 2, 3, 1], 16),
    ],
)
def test_blocks_per_stage_and_weight_layers(lays, extra, blocks, layers):
    m = ResNet(lays=lays, seed_extra_block=extra, width=8)
    stages = [m.layer1, m.layer2, m.layer3, m.layer4]
    assert [len(s) for s in stages] == m.blocks_per_stage == blocks
    assert all(isinstance(b, BasicBlock) for s in stages for b in s)
    assert weight_layers(m) == layers


def test_shortcut_projection_only_where_shape_changes():
    m = ResNet(width=8)
    # first block of stage 1 keeps the shape (stride 1, width 8 -> 8): identity
    assert isinstance(m.layer1[0].downsample, nn.Identity)
    for stage in (m.layer2, m.layer3, m.layer4):
        assert isinstance(stage[0].downsample, nn.Sequential)
        assert all(isinstance(b.downsample, nn.Identity) for b in stage[1:])


VARIANTS = [
    {},
    {"stem": "7x7"},
    {"stem_bn": False},
    {"stem": "7x7", "stem_bn": False},
    {"dropout": 0.4},
    {"dropout": 0.8},
    {"softmax_head": True},
    {"seed_extra_block": True, "softmax_head": True},
    {"lays": (3, 3, 3, 3)},
]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_output_shapes(kw):
    torch.manual_seed(0)
    m = ResNet(width=8, **kw)
    x = torch.randn(5, 3, 32, 32)
    for mode in (True, False):
        m.train(mode)
        out = m(x)
        assert out.shape == (5, 10)
        assert torch.isfinite(out).all()
    probs_like = torch.allclose(out.sum(1), torch.ones(5), atol=1e-5) and (out >= 0).all()
    assert bool(probs_like) == kw.get("softmax_head", False)


def test_stem_variants():
    m3, m7 = ResNet(width=8), ResNet(width=8, stem="7x7")
    assert (m3.conv1.kernel_size, m3.conv1.stride, m3.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert (m7.conv1.kernel_size, m7.conv1.stride, m7.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert m3.conv1.bias is not None  # the seed's stem conv has a bias
    assert isinstance(ResNet(width=8, stem_bn=False).bn1, nn.Identity)
    assert isinstance(m3.bn1, nn.BatchNorm2d)
    assert ResNet(width=8, dropout=0.4).dropout.p == 0.4


def test_dropout_active_only_in_training():
    torch.manual_seed(0)
    m = ResNet(width=8, dropout=0.8).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(m(x), m(x))
    m.fc.train(), m.dropout.train()
    assert not torch.equal(m(x), m(x))


def test_build_model_from_config():
    cfg = TrainConfig(
        width=8, lays=(1, 2, 1, 1), stem="7x7", stem_bn=False, dropout=0.3, seed_extra_block=True, softmax_head=True
    )
    m = build_model(cfg)
    assert m.blocks_per_stage == [2, 3, 2, 2]
    assert isinstance(m.head, nn.Softmax) and isinstance(m.bn1, nn.Identity) and m.dropout.p == 0.3
    assert m.conv1.kernel_size == (7, 7) and m.conv1.out_channels == 8 and m.fc.in_features == 64


def test_flops_seed_network():
    m = ResNet(lays=(2, 2, 2, 2), seed_extra_block=True, width=64)
    # SPEC: one training image costs 5.14 GFLOP (forward + backward) in the seed's network
    assert flops_per_image(m) == pytest.approx(5.14e9, rel=0.02)
    assert flops_per_image(m, train=False) == pytest.approx(5.14e9 / 3, rel=0.02)
    assert m.training  # restored


def test_flops_scale_with_width_and_stem():
    a, b = ResNet(width=8), ResNet(width=16)
    assert flops_per_image(b) / flops_per_image(a) == pytest.approx(4, rel=0.05)
    assert flops_per_image(ResNet(width=8, stem="7x7")) < flops_per_image(a) / 3


def test_param_count_resnet18():
    n = count_params(ResNet(lays=(2, 2, 2, 2), width=64))
    assert n == pytest.approx(11.17e6, abs=0.01e6)


@pytest.mark.parametrize(
    "kw",
    [
        {"lays": (2, 2, 2)},
        {"lays": (2, 2, 2, 2, 2)},
        {"lays": (2, 0, 2, 2)},
        {"lays": (2, -1, 2, 2)},
        {"lays": (2, 2.5, 2, 2)},
        {"stem": "5x5"},
        {"stem": "7x7s1"},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"width": 0},
    ],
    ids=lambda kw: f"{next(iter(kw))}={next(iter(kw.values()))}",
)
def test_invalid_arguments(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        ResNet(**kw)


def test_counting_a_runs_cost_draws_no_random_numbers():
    # Sweep lanes count a job's GFLOP while another lane seeds and builds its model from
    # torch's global generator: counting must not draw from it.
    from labkit.model import run_gflop

    cfg = TrainConfig(width=8, lays=(1, 2, 1, 2), stem="7x7")  # an architecture not counted before
    state = torch.get_rng_state()
    gflop = run_gflop(cfg, 1000, 100)
    assert torch.equal(torch.get_rng_state(), state)
    assert gflop == pytest.approx(cfg.epochs * (1000 + 100 / 3) * flops_per_image(ResNet(width=8, lays=(1, 2, 1, 2), stem="7x7")) / 1e9)
