"""Speed benchmark: the seed's recipe, as the seed wrote it, beside labkit's path, in one process.

    python -m labkit bench --data-dir DIR [--epochs 3] [--out benchmarks/results/x.json]
    python -m labkit bench --cpu-check            # a small check of the code on a CPU

(a) seed recipe: the seed's network (both defects), a torch Dataset of HWC uint8 images with
    torchvision transforms on the CPU (RandomCrop(32, 4), RandomHorizontalFlip, ToTensor,
    Normalize) in a DataLoader with 8 workers, Adam, fp32, batch 512.
(b) labkit: the same network, batch and augmentation semantics through labkit.train (data
    resident on the device, GPU crop/flip, bf16 autocast, channels_last, CUDA-graphed step,
    fused Adam, one host sync per epoch).
Epoch times exclude evaluation. The first epoch of each side is a warm-up (worker start,
cuDNN autotuning, graph capture) and is reported but not used for the ratio.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import PAPER, TrainConfig
from ..data import NORMS, Dataset, load_cifar10
from ..model import build_model, flops_per_image
from ..runs import command_line
from ..train import device_name, resolve_device, train
from .sweep import GPU_GATE, LANE_HOOKS, machine_name

__all__ = [
    "seed_recipe", "labkit_epoch_times", "accuracy_check", "compare_accuracies", "step_breakdown", "bf16_peak_tflops", "run_bench",
]


class _SeedDataset(torch.utils.data.Dataset):
    """How the seed feeds images: HWC uint8 arrays through PIL-based torchvision transforms."""

    def __init__(self, x_u8_chw: torch.Tensor, y: torch.Tensor, norm: str) -> None:
        import torchvision.transforms as T

        self.x = x_u8_chw.permute(0, 2, 3, 1).numpy()  # [N, 32, 32, 3]
        self.y = y.numpy()
        mean, std = NORMS[norm]
        self.tf = T.Compose(
            [T.ToPILImage(), T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
        )

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.tf(self.x[i]), int(self.y[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_recipe(
    cfg: TrainConfig, data: Dataset, epochs: int, device: torch.device, workers: int = 8
) -> tuple[list[float], nn.Module]:
    """Train as the seed did (fp32, CPU transforms, DataLoader, Adam, lr x decay_rate after
    every epoch); returns seconds per training epoch and the trained network."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.decay_rate)
    loss_fn = nn.CrossEntropyLoss()
    x, y = data.train_x, data.train_y
    if cfg.train_subset:
        x, y = x[: cfg.train_subset], y[: cfg.train_subset]
    loader = torch.utils.data.DataLoader(
        _SeedDataset(x, y, cfg.norm),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    times = []
    for _ in range(epochs):
        model.train()
        _sync(device)
        t0 = time.perf_counter()
        total = 0.0
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item()  # the seed sums batch losses with .item() every step
        sched.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, model


def accuracy_check(
    cfg: TrainConfig,
    data: Dataset,
    epochs: int,
    seeds: int,
    device: torch.device,
    workers: int = 8,
    store=None,
    name: str = "ablation-baseline",
) -> dict:
    """Validation accuracy after `epochs` epochs of the seed's recipe and of labkit's path,
    `seeds` runs each (seeds 0, 1, ...), and the Welch 95% CI of their difference.

    labkit's runs come from `store` (a RunStore) when it holds them under `name`, and are
    trained (into it, if given) when not: the lab's own baseline runs are this comparison's
    labkit side. A CI that holds 0 shows no difference, which at a few seeds is weak evidence
    of equality; the verdict says which.
    """
    from ..train import evaluate

    if epochs < 1 or seeds < 1:
        raise ValueError(f"accuracy check needs epochs >= 1 and seeds >= 1, got epochs={epochs}, seeds={seeds}")
    if not len(data.val_y):
        raise ValueError("accuracy check needs a validation set: the seed split")
    vx, vy = data.val_x.to(device), data.val_y.to(device)
    ours, theirs, sources = [], [], []
    for s in range(seeds):
        c = cfg.replace(seed=s, epochs=epochs, device=device.type)
        _, model = seed_recipe(c, data, epochs, device, workers)
        theirs.append(evaluate(model, vx, vy, c.replace(channels_last=False))[0])  # fp32, eval mode
        del model
        if store is not None:
            found = store.find(c, name)
            run = store.get(c, name, data, progress=False, log=None)
            sources.append(run.id + (" (from the store)" if found is not None and found.finished else ""))
            ours.append(run.summary["final_val_acc"])
        else:
            r = train(c, data, progress=False, log=None)
            ours.append(r.summary["final_val_acc"])
    return {"epochs": epochs, "seeds": seeds, "labkit_runs": sources, **compare_accuracies(ours, theirs)}


def compare_accuracies(ours: list[float], theirs: list[float]) -> dict:
    """labkit's and the seed recipe's accuracies side by side: each side's mean and SD, the
    Welch 95% CI of the difference, and the difference beside the run-to-run noise (the
    pooled SD of one run), which is what "the same accuracy within run-to-run noise" asks.
    A CI that holds 0 is weak evidence of equality at a few seeds; its width says how large
    a difference could still hide."""
    from ..stats import estimate, welch

    a, b, d = estimate(ours, bounds=(0.0, 1.0)), estimate(theirs, bounds=(0.0, 1.0)), welch(ours, theirs)
    shown = d.lo == d.lo and not (d.lo <= 0.0 <= d.hi)
    pooled = math.nan
    if a.n >= 2 and b.n >= 2:
        pooled = math.sqrt(((a.n - 1) * a.sd**2 + (b.n - 1) * b.sd**2) / (a.n + b.n - 2))
    within = bool(abs(d.diff) <= pooled) if pooled == pooled else None
    return {
        "labkit_val_acc": list(ours),
        "seed_recipe_val_acc": list(theirs),
        "labkit": {"mean": a.mean, "sd": a.sd},
        "seed_recipe": {"mean": b.mean, "sd": b.sd},
        "difference": {"labkit_minus_seed": d.diff, "ci95": [d.lo, d.hi]},
        "noise": {"pooled_sd": pooled, "difference_within_it": within},
        "verdict": (
            "too few seeds for an interval" if d.lo != d.lo
            else ("labkit differs from the seed recipe" if shown else "no difference shown (95% CI holds 0)")
        ),
    }


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:500]}"


def labkit_epoch_times(cfg: TrainConfig, data: Dataset, epochs: int) -> tuple[list[float], dict]:
    r = train(cfg.replace(epochs=epochs), data, progress=False, log=None)
    return [row["seconds"] for row in r.history], r.summary


def lanes_probe(cfg: TrainConfig, data: Dataset, lanes: int, epochs: int = 3) -> dict:
    """Total images/s of `lanes` copies of a run training side by side (threads, one CUDA
    stream each), as labkit.sweep runs them. All lanes finish their warm-up epoch (cuDNN
    tuning, graph capture) before the clock starts, so only overlapped epochs count."""
    import threading

    barrier = threading.Barrier(lanes + 1)
    ends: list[float] = [0.0] * lanes
    n = min(cfg.train_subset or len(data.train_y), len(data.train_y))

    def after_epoch(i: int, history: list[dict]) -> None:
        if len(history) == 1:
            torch.cuda.current_stream().synchronize()
            # Wait off the gate: a lane still to capture its graph needs every other lane out.
            GPU_GATE.leave()
            try:
                barrier.wait()
            finally:
                GPU_GATE.enter()

    errors: list[str] = []

    def one(i: int) -> None:
        try:
            with torch.cuda.stream(torch.cuda.Stream()), GPU_GATE.shared():
                train(cfg.replace(epochs=epochs, seed=cfg.seed + i), data, progress=False, log=None,
                      on_epoch=lambda h: after_epoch(i, h), hooks=LANE_HOOKS)
                torch.cuda.current_stream().synchronize()
            ends[i] = time.perf_counter()
        except BaseException as e:  # the others stop at the barrier; the probe reports this
            if not isinstance(e, threading.BrokenBarrierError):
                errors.append(f"lane {i}: {type(e).__name__}: {e}")
            barrier.abort()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(lanes)]
    for t in threads:
        t.start()
    try:
        barrier.wait()  # raises BrokenBarrierError if a lane failed
        t0 = time.perf_counter()
    except threading.BrokenBarrierError:
        t0 = None
    finally:  # no lane left running into whatever is measured next
        for t in threads:
            t.join()
    if t0 is None or not all(ends):
        raise RuntimeError("; ".join(errors) or "a lane failed")
    wall = max(ends) - t0
    return {"lanes": lanes, "steady_epochs": epochs - 1, "wall_seconds": wall,
            "total_images_per_s": lanes * n * (epochs - 1) / wall}


# Where a step's time goes, by kind of op (self time, so nested ops are not counted twice).
# First match wins; the order puts the specific names before the generic elementwise ones.
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


def step_breakdown(cfg: TrainConfig, data: Dataset, steps: int = 20, warmup: int = 5) -> dict:
    """Profile `steps` eager training steps of labkit's path (crop/flip, normalise, forward,
    backward, optimiser) and sum each op's self time per step by kind (OP_KINDS): device
    time on a GPU, CPU time on a CPU. Eager, because a replayed CUDA graph hides its kernels
    from the profiler; the graph removes launch gaps, not the kernels' own time."""
    from torch.profiler import ProfilerActivity, profile

    from ..data import augment
    from ..step import Stepper, autocast_dtype, make_optimizer, prep

    if steps < 1 or warmup < 0:
        raise ValueError(f"step breakdown needs steps >= 1 and warmup >= 0, got {steps}, {warmup}")
    device = resolve_device(cfg.device)
    cfg = cfg.replace(cuda_graphs=False, device=device.type)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model, device)
    stepper = Stepper(model, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), cfg, device, autocast_dtype(cfg, device))
    x, y = data.train_x.to(device), data.train_y.to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    b = min(cfg.batch_size, len(y))

    def step() -> None:
        idx = torch.randint(0, len(y), (b,), device=device, generator=gen)
        xb = prep(augment(x[idx], generator=gen), cfg)
        stepper(xb, y[idx], opt)
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    wall = time.perf_counter() - t0
    on_gpu = device.type == "cuda"
    rows = []
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):  # aten ops are named alike on CPU and GPU
            continue
        us = getattr(e, "self_device_time_total", None) if on_gpu else e.self_cpu_time_total
        if us is None:  # torch before 2.4 names it after CUDA
            us = e.self_cuda_time_total
        if us > 0:
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
        "kinds": {k: {"ms_per_step": v, "share": v / total if total else None} for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": n, "ms_per_step": ms, "calls_per_step": c} for n, ms, c in rows[:15]],
    }


def bf16_peak_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float | None:
    """Measured dense bf16 matmul rate (random data) on this GPU: the ceiling we compare to."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1000) / 1e12


def run_bench(
    data: Dataset,
    epochs: int = 3,
    device_name: str = "auto",
    workers: int = 8,
    cfg: TrainConfig | None = None,
    command: str = "",
    compile_mode: str = "",
) -> dict:
    device = resolve_device(device_name)
    cfg = (cfg or PAPER).replace(device=device.type)
    if compile_mode:
        cfg.replace(compile=compile_mode)  # a bad mode fails now, not after the seed recipe's epochs
    n = len(data.train_y) if not cfg.train_subset else min(cfg.train_subset, len(data.train_y))
    flops = flops_per_image(build_model(cfg))
    peak = bf16_peak_tflops(device)

    a_times = seed_recipe(cfg, data, epochs, device, workers)[0] if workers >= 0 else [float("nan")]
    b_times, b_summary = labkit_epoch_times(cfg, data, epochs)
    steady = lambda t: statistics.median(t[1:]) if len(t) > 1 else t[0]  # noqa: E731
    a_s, b_s = steady(a_times), steady(b_times)
    res = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command or command_line(),
        "device": machine_name(device),
        "versions": {"torch": torch.__version__, "python": platform.python_version(), "numpy": np.__version__},
        "data": data.source.get("description"),
        "network": {"lays": list(cfg.lays), "seed_extra_block": cfg.seed_extra_block, "softmax_head": cfg.softmax_head, "width": cfg.width},
        "batch_size": cfg.batch_size,
        "train_images_per_epoch": n,
        "train_gflop_per_image": flops / 1e9,
        "bf16_peak_tflops_measured": peak,
        "seed_recipe": {
            "epoch_seconds": a_times,
            "steady_epoch_seconds": a_s,
            "images_per_s": n / a_s,
            "precision": "fp32",
            "loader_workers": workers,
        },
        "labkit": {
            "epoch_seconds": b_times,
            "steady_epoch_seconds": b_s,
            "images_per_s": n / b_s,
            "precision": b_summary["precision"],
            "step_mode": b_summary["step_mode"],
            "graph_fallback": b_summary["graph_fallback"],
        },
        "speedup": a_s / b_s,
    }
    for side in ("seed_recipe", "labkit"):
        _rate(res, side)
    if compile_mode:
        add_compiled(res, cfg, data, epochs, compile_mode)
    return res


def _rate(res: dict, side: str) -> None:
    tflops = res["train_gflop_per_image"] * res[side]["images_per_s"] / 1e3
    peak = res["bf16_peak_tflops_measured"]
    res[side]["achieved_tflops"] = tflops
    res[side]["share_of_bf16_peak"] = tflops / peak if peak else None


def add_compiled(res: dict, cfg: TrainConfig, data: Dataset, epochs: int, compile_mode: str) -> None:
    """labkit's path under torch.compile, into a run_bench record (`labkit_compiled`,
    `speedup_compiled`). Measured last, after everything else is saved: it has never run on
    the GPU the benchmark is for, and a failure is recorded as its error, not raised."""
    try:
        c_times, c_summary = labkit_epoch_times(cfg.replace(compile=compile_mode), data, epochs)
    except Exception as e:
        traceback.print_exc()
        res["labkit_compiled"] = {"compile": compile_mode, "error": _error_text(e)}
        return
    c_s = statistics.median(c_times[1:]) if len(c_times) > 1 else c_times[0]
    res["labkit_compiled"] = {
        "compile": compile_mode,
        "epoch_seconds": c_times,  # the first includes compiling
        "steady_epoch_seconds": c_s,
        "images_per_s": res["train_images_per_epoch"] / c_s,
        "precision": c_summary["precision"],
        "step_mode": c_summary["step_mode"],
        "graph_fallback": c_summary["graph_fallback"],
    }
    res["speedup_compiled"] = res["seed_recipe"]["steady_epoch_seconds"] / c_s
    _rate(res, "labkit_compiled")


def format_bench(res: dict) -> str:
    a, b = res["seed_recipe"], res["labkit"]
    lines = [
        f"device {res['device']}  data: {res['data']}  batch {res['batch_size']}  {res['train_images_per_epoch']} images/epoch",
        f"{'':12s} {'s/epoch':>9s} {'img/s':>9s} {'TFLOP/s':>9s} {'of peak':>8s}",
    ]
    sides = [("seed recipe", a), ("labkit", b)]
    if "labkit_compiled" in res and "error" not in res["labkit_compiled"]:
        sides.append(("+compile", res["labkit_compiled"]))
    for name, s in sides:
        share = f"{100 * s['share_of_bf16_peak']:.1f}%" if s["share_of_bf16_peak"] else "-"
        lines.append(f"{name:12s} {s['steady_epoch_seconds']:9.3f} {s['images_per_s']:9.0f} {s['achieved_tflops']:9.2f} {share:>8s}")
    lines.append(f"speedup labkit / seed recipe: {res['speedup']:.2f}x  (labkit step: {b['step_mode']})")
    if "speedup_compiled" in res:
        c = res["labkit_compiled"]
        lines.append(
            f"speedup labkit+compile({c['compile']}) / seed recipe: {res['speedup_compiled']:.2f}x  "
            f"(first epoch with compiling: {c['epoch_seconds'][0]:.1f}s)"
        )
    if "error" in res.get("labkit_compiled", {}):
        c = res["labkit_compiled"]
        lines.append(f"labkit+compile({c['compile']}) failed: {c['error']}")
    if "error" in res.get("breakdown", {}):
        lines.append(f"step breakdown failed: {res['breakdown']['error']}")
    elif "breakdown" in res:
        k = res["breakdown"]
        lines.append(f"labkit step, eager, by kind of op ({k['time']}, {k['op_ms_per_step']:.2f} ms per step of {k['batch_size']}):")
        lines += [f"  {name:38s} {v['ms_per_step']:8.2f} ms  {100 * v['share']:5.1f}%" for name, v in k["kinds"].items()]
    if "accuracy" in res:
        a = res["accuracy"]
        d = a["difference"]
        lines.append(
            f"val acc after {a['epochs']} epochs, {a['seeds']} seed(s): labkit {100 * a['labkit']['mean']:.2f}"
            f" (SD {100 * a['labkit']['sd']:.2f}), seed recipe {100 * a['seed_recipe']['mean']:.2f}"
            f" (SD {100 * a['seed_recipe']['sd']:.2f}); difference {100 * d['labkit_minus_seed']:+.2f} points,"
            f" 95% CI [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]: {a['verdict']}"
        )
        z = a.get("noise", {})
        if z.get("difference_within_it") is not None:
            lines.append(
                f"  |difference| {100 * abs(d['labkit_minus_seed']):.2f} points "
                + ("<=" if z["difference_within_it"] else ">")
                + f" the run-to-run SD of one run (pooled, {100 * z['pooled_sd']:.2f} points): "
                + ("within" if z["difference_within_it"] else "beyond")
                + " run-to-run noise"
            )
    for p in res.get("lanes", []):
        lines.append(f"  {p['lanes']} lane(s) side by side: " + (f"{p['total_images_per_s']:.0f} img/s in total" if "error" not in p else p["error"]))
    return "\n".join(lines)


def main_bench(args) -> int:
    from ..config import ConfigError
    from ..runs import check_writable

    check_writable(args.out, "--out")
    if args.accuracy_epochs < 0 or args.accuracy_seeds < 2:
        raise ConfigError(
            f"--accuracy-epochs must be >= 0 and --accuracy-seeds >= 2 (a confidence interval needs two seeds a side), "
            f"got {args.accuracy_epochs} and {args.accuracy_seeds}"
        )
    if args.compile:
        PAPER.replace(compile=args.compile)  # a bad mode fails now, not after minutes of benchmark
    if args.epochs < 2:  # the first epoch of each side is a warm-up, left out of the ratio
        raise ConfigError(f"--epochs must be >= 2 (the first of each side is a warm-up), got {args.epochs}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (DataLoader workers of the seed recipe), got {args.workers}")
    if any(k < 1 for k in args.probe_lanes):
        raise ConfigError(f"--probe-lanes takes lane counts >= 1, got {args.probe_lanes}")
    if args.breakdown_steps < 0:
        raise ConfigError(f"--breakdown-steps must be >= 0 (0 = off), got {args.breakdown_steps}")
    if args.accuracy_runs and not args.accuracy_epochs:
        raise ConfigError("--accuracy-runs needs --accuracy-epochs (the accuracy check is off without it)")
    if not (args.cpu_check or args.allow_cpu or torch.cuda.is_available()):
        # The benchmark is the seed's width-64 network over 40,000 images, several epochs a
        # side: on a CPU, hours of work that measure nothing the report uses.
        raise ConfigError(
            "torch sees no CUDA GPU: the benchmark times the seed's full network and data on a GPU, and on a "
            "CPU it would run for hours. Use --cpu-check for the small CPU check of the benchmark code, or "
            "--allow-cpu if you really mean to time the full benchmark on this CPU (--workers to fit its cores)"
        )
    cfg, device = PAPER, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.cpu_check:
        import tempfile

        from ..synthetic import make_synthetic_cifar10

        with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:  # read into memory, then gone
            make_synthetic_cifar10(tmp, per_batch=128)
            data = load_cifar10(tmp, "seed", allow_download=False)
        cfg, device = PAPER.replace(width=8, batch_size=64), torch.device("cpu")
        epochs = 2
        res = run_bench(data, epochs=epochs, device_name="cpu", workers=0, cfg=cfg, command=args.command)
        res["note"] = "CPU check of the benchmark code on synthetic data and a width-8 net; not a speed figure"
    else:
        data = load_cifar10(args.data_dir, "seed")
        if args.accuracy_runs:  # before minutes of benchmark: its baseline runs must be of these data
            from ..runs import RunStore

            RunStore(args.accuracy_runs).refuse_other_data(
                data.source, args.data_dir or "the default data folder",
                "give --data-dir the data they were trained on, or another --accuracy-runs store",
            )
        epochs = args.epochs
        res = run_bench(data, epochs=epochs, workers=args.workers, command=args.command)
    save = lambda: args.out and Path(args.out).write_text(json.dumps(res, indent=2))  # noqa: E731
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save()  # before the probe, which runs threads on the GPU: keep what we have
    if args.probe_lanes and torch.cuda.is_available():
        res["lanes"] = []
        for k in sorted({1, *args.probe_lanes}):  # 1 lane measured the same way, evaluation included
            try:
                res["lanes"].append(lanes_probe(PAPER.replace(device="cuda"), data, k))
            except Exception as e:  # report, never lose the rest of the benchmark
                traceback.print_exc()
                res["lanes"].append({"lanes": k, "error": _error_text(e)})
            save()
    if args.breakdown_steps:
        try:
            res["breakdown"] = step_breakdown(cfg.replace(device=device.type), data, steps=args.breakdown_steps)
        except Exception as e:  # the profiler is not the benchmark: report, never lose the rest
            traceback.print_exc()
            res["breakdown"] = {"error": _error_text(e)}
        save()
    if args.accuracy_epochs:
        from ..runs import RunStore

        store = RunStore(args.accuracy_runs) if args.accuracy_runs else None
        res["accuracy"] = accuracy_check(
            cfg, data, args.accuracy_epochs, args.accuracy_seeds, device, 0 if args.cpu_check else args.workers, store
        )
        save()
    if args.compile:  # last: never run on this GPU before, it must not cost the rest
        add_compiled(res, cfg.replace(device=device.type), data, epochs, args.compile)
        save()
    print(format_bench(res))
    if args.out:
        print(f"wrote {args.out}")
    return 0
