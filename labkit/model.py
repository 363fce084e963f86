"""The original's ResNet, in torchvision's BasicBlock / _make_layer shape, with the two defects of the original's code
as switches (off by default) so that its numbers can be reproduced:
  - `seed_extra_block`: its `_make_lay` appends one block and then `n` more, so `lays=[2,2,2,2]` builds
    3 blocks per stage (a 26-layer net called ResNet18);
  - `softmax_head`: the net ends in Softmax although it is trained with cross-entropy, so softmax is applied
    twice and the loss cannot fall below about 1.46.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .config import STEMS

# The config fields build_model reads: what a network's cost depends on.
NETWORK_FIELDS = ("lays", "stem", "stem_bn", "dropout", "seed_extra_block", "softmax_head", "width")
# Those that shape its weights: weights trained with one value of these do not load into a net built with another.
WEIGHT_SHAPE_FIELDS = ("lays", "stem", "stem_bn", "seed_extra_block", "width")


class Dropout(nn.Module):
    """nn.Dropout that draws its masks from `generator` when one is set (the trainer sets the run's own): runs
    side by side in threads (labkit.scale.sweep's lanes) would otherwise share torch's global generator. The
    arithmetic is torch's CPU dropout's, so a generator seeded like the global one gives the same masks; no state.
    Under CUDA-graph capture the forward pass multiplies by `static_keep`, a buffer allocated in the capture,
    which the trainer fills with `redraw()` (the eager draw, from the same generator) before every replay: a
    graphed run drops the eager run's units, and the graph replays no random-number offsets."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:  # p = 1 would divide by zero
            raise ValueError(f"dropout must lie in [0, 1), got {p}")
        self.p = p
        self.generator: torch.Generator | None = None
        self.static_keep: Tensor | None = None

    def redraw(self) -> None:
        """Draw the next mask into `static_keep` (outside the graph, before a replay)."""
        if self.static_keep is None:
            raise RuntimeError("redraw() needs a mask buffer: none was captured in a CUDA graph")
        self._draw(self.static_keep)

    def _draw(self, out: Tensor) -> Tensor:  # a mask of kept units, scaled by 1 / (1 - p)
        return out.bernoulli_(1.0 - self.p, generator=self.generator).div_(1.0 - self.p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.generator is None:
            return nn.functional.dropout(x, self.p, training=True)
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            self.static_keep = torch.empty_like(x)  # in the graph's memory; filled by redraw()
            return x * self.static_keep
        return x * self._draw(torch.empty_like(x))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:  # a 1x1 projection only where the shape changes, as in torchvision
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet(nn.Module):
    """Stem, four stages of `lays` BasicBlocks (`width` x 1, 2, 4, 8 channels; the original's width is 64), pool,
    `dropout`, linear. stem "3x3": stride 1, the CIFAR stem; "7x7": stride 2, the ImageNet conv (the original builds
    its max-pool but never uses it, so neither do we); stem_bn: BatchNorm after it."""

    def __init__(self, lays: Sequence[int] = (2, 2, 2, 2), stem: str = "3x3", stem_bn: bool = True,
                 dropout: float = 0.0, num_classes: int = 10, seed_extra_block: bool = False,
                 softmax_head: bool = False, width: int = 64) -> None:
        super().__init__()
        # 2.5 blocks is not a depth: refuse non-integers rather than truncate them.
        if len(lays) != 4 or any(isinstance(n, bool) or int(n) != n or n < 1 for n in lays):
            raise ValueError(f"lays must be four positive ints, got {list(lays)}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if width < 1:
            raise ValueError(f"width must be a positive int, got {width}")
        k, s, p = (3, 1, 1) if stem == "3x3" else (7, 2, 3)
        widths = [width * m for m in (1, 2, 4, 8)]
        self.conv1 = nn.Conv2d(3, width, k, s, p, bias=True)  # the original's has a bias even before BatchNorm
        self.bn1: nn.Module = nn.BatchNorm2d(width) if stem_bn else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.blocks_per_stage = [int(n) + int(seed_extra_block) for n in lays]
        self.in_planes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(w, n, stride) for w, n, stride in zip(widths, self.blocks_per_stage, (1, 2, 2, 2), strict=True)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.head: nn.Module = nn.Softmax(dim=1) if softmax_head else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(self.in_planes, planes, stride)]
        self.in_planes = planes
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # [B, 64, 32, 32] (3x3) or [B, 64, 16, 16] (7x7)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, 8*width, H/8, W/8]
        x = torch.flatten(self.avgpool(x), 1)  # [B, 8*width]
        return self.head(self.fc(self.dropout(x)))  # [B, classes]


def build_model(cfg) -> ResNet:
    """A ResNet from any object with the NETWORK_FIELDS of a TrainConfig."""
    return ResNet(**{k: getattr(cfg, k) for k in NETWORK_FIELDS})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_layers(model: nn.Module) -> int:
    """Convolutions and linear layers on the main path (shortcut projections excluded)."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) and "downsample" not in name for name, m in model.named_modules())


@torch.no_grad()
def flops_per_image(model: nn.Module, train: bool = True, size: int = 32) -> float:
    """2 x the multiply-adds of convolutions and linear layers for one image; training (forward + backward)
    counts 3 x the forward, the usual estimate."""
    total = 0

    def hook(m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        total += 2 * out.numel() * m.weight[0].numel()  # each output: one multiply-add per weight of its filter/row

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return float(total * (3 if train else 1))


@functools.lru_cache(maxsize=64)
def _train_gflop_per_image(arch: tuple) -> float:
    # On the meta device: no memory, and no draw from torch's global generator, which a run being seeded in
    # another lane (a thread) at this moment would otherwise share.
    with torch.device("meta"):
        model = ResNet(**dict(zip(NETWORK_FIELDS, arch, strict=True)))
    return flops_per_image(model) / 1e9


def run_gflop(cfg, train_images: int, eval_images: int) -> float:
    """GFLOP a run costs: `cfg.epochs` epochs of training on `train_images`, evaluating `eval_images` per epoch
    (a forward pass: a third of a training step's cost)."""
    f = _train_gflop_per_image(tuple(getattr(cfg, k) for k in NETWORK_FIELDS))
    return cfg.epochs * (train_images * f + eval_images * f / 3)


def measure_gflops(cfg, device: str = "cpu", batch: int = 16, steps: int = 2) -> float:
    """Training GFLOP/s of `cfg`'s network on `device`, timed over a few steps on random images after an untimed
    one: enough to tell minutes from days before starting."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(cfg.replace(device=dev.type)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, 32, 32, device=dev), torch.randint(0, 10, (batch,), device=dev)

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return flops_per_image(model) * batch * steps / (time.perf_counter() - t0) / 1e9
