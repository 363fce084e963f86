"""Where a training step's time goes (`python -m benchmarks.bench --breakdown-steps`): each aten op's self time per
step, so that nested ops are not counted twice, summed by kind of op."""

from __future__ import annotations

import time

import torch
from torch import nn

from labkit.config import TrainConfig
from labkit.data import Dataset, augment
from labkit.model import build_model
from labkit.step import Stepper, autocast_dtype, device_name, make_optimizer, prep, resolve_device

# First match wins: the specific names come before the generic elementwise ones.
OP_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("convolution", ("conv",)),
    ("batch norm", ("batch_norm",)),
    ("optimizer", ("adam", "sgd", "_foreach", "fused", "lerp", "addcdiv", "sqrt")),
    ("loss and softmax", ("softmax", "cross_entropy", "nll_loss", "log_softmax")),
    ("pooling and linear", ("pool", "addmm", "mm", "linear")),
    ("data (crop, flip)", ("index", "pad", "rand", "where", "gather")),
    ("casts and copies (autocast, layout)", ("copy", "_to_", "contiguous", "clone")),
    ("relu, add, other elementwise", ("relu", "threshold", "add", "mul", "div", "sub", "fill", "zero", "clamp")),
)


def op_kind(name: str) -> str:
    n = name.lower()
    return next((kind for kind, keys in OP_KINDS if any(k in n for k in keys)), "other")


def _eager_step(cfg: TrainConfig, data: Dataset, device: torch.device):
    """A function running one eager step of labkit's path (crop/flip, normalise, forward, backward,
    optimiser), and its batch size."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model, device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    stepper = Stepper(model, loss_fn, cfg, device, autocast_dtype(cfg, device))
    x, y = data.train_x.to(device), data.train_y.to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    b = min(cfg.batch_size, len(y))

    def step() -> None:
        idx = torch.randint(0, len(y), (b,), device=device, generator=gen)
        stepper(prep(augment(x[idx], generator=gen), cfg), y[idx], opt)
        opt.step()

    return step, b


def step_breakdown(cfg: TrainConfig, data: Dataset, steps: int = 20, warmup: int = 5) -> dict:
    """Each aten op's self time per step over `steps` eager steps of labkit's path, summed by kind
    (OP_KINDS): device time on a GPU, CPU time on a CPU. Eager, because a replayed CUDA graph hides its
    kernels from the profiler; the graph removes launch gaps, not the kernels' own time."""
    from torch.profiler import ProfilerActivity, profile

    if steps < 1 or warmup < 0:
        raise ValueError(f"step breakdown needs steps >= 1 and warmup >= 0, got {steps}, {warmup}")
    device = resolve_device(cfg.device)
    on_gpu = device.type == "cuda"

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(device)

    step, b = _eager_step(cfg.replace(cuda_graphs=False, device=device.type), data, device)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as prof:
        for _ in range(steps):
            step()
        sync()
    wall = time.perf_counter() - t0
    rows = []  # (op, ms per step, calls per step) of aten ops, named alike on CPU and GPU
    for e in prof.key_averages():
        us = e.self_device_time_total if on_gpu else e.self_cpu_time_total
        if e.key.startswith("aten::") and us > 0:
            rows.append((e.key, us / 1000 / steps, e.count / steps))
    rows.sort(key=lambda r: -r[1])
    total = sum(ms for _, ms, _ in rows)
    kinds: dict[str, float] = {}
    for name, ms, _ in rows:
        kinds[op_kind(name)] = kinds.get(op_kind(name), 0.0) + ms
    return {
        "device": device_name(device),
        "time": "self device time of aten ops" if on_gpu else "self CPU time of aten ops",
        "batch_size": b,
        "steps": steps,
        "wall_ms_per_step_profiled": 1000 * wall / steps,
        "op_ms_per_step": total,
        "kinds": {k: {"ms_per_step": v, "share": v / total if total else None}
                  for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": n, "ms_per_step": ms, "calls_per_step": c} for n, ms, c in rows[:15]],
    }
