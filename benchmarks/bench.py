"""Speed benchmark (`python -m benchmarks.bench`, from the project root): the student's recipe as
its code runs it (CPU transforms in a DataLoader, fp32, Adam) beside labkit's path on the same
network and batch (data on the device, bf16, channels_last, CUDA-graphed step, fused Adam), in one
process. Epoch times leave out evaluation; each side's first epoch is a warm-up (worker start,
cuDNN tuning, graph capture), left out of the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.breakdown import step_breakdown
from benchmarks.choose import sweep_options
from labkit.config import PAPER, ConfigError, TrainConfig
from labkit.data import NORMS, DataError, Dataset, load_cifar10
from labkit.evaluate import evaluate
from labkit.model import build_model, flops_per_image
from labkit.runs import RunError, RunStore, check_writable
from labkit.scale.gate import GPU_GATE, LANE_HOOKS
from labkit.scale.sweep import machine_name
from labkit.stats import estimate, welch
from labkit.step import resolve_device
from labkit.synthetic import make_synthetic_cifar10
from labkit.train import train


class _SeedDataset(torch.utils.data.Dataset):
    """How the seed feeds images: HWC uint8 arrays through PIL-based torchvision transforms."""

    def __init__(self, x_u8_chw: torch.Tensor, y: torch.Tensor, norm: str) -> None:
        import torchvision.transforms as T

        self.x = x_u8_chw.permute(0, 2, 3, 1).numpy()  # [N, 32, 32, 3]
        self.y = y.numpy()
        mean, std = NORMS[norm]
        self.tf = T.Compose([T.ToPILImage(), T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.tf(self.x[i]), int(self.y[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_recipe(cfg: TrainConfig, data: Dataset, epochs: int, device: torch.device,
                workers: int = 8) -> tuple[list[float], nn.Module]:
    """Train as the seed did (fp32, CPU transforms, DataLoader, Adam, lr x decay_rate after each epoch);
    returns the seconds of each training epoch and the trained network."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.decay_rate)
    loss_fn = nn.CrossEntropyLoss()
    n = cfg.train_subset or None
    loader = torch.utils.data.DataLoader(
        _SeedDataset(data.train_x[:n], data.train_y[:n], cfg.norm), batch_size=cfg.batch_size, shuffle=True,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )
    times = []
    for _ in range(epochs):
        model.train()
        _sync(device)
        t0 = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            loss.item()  # the seed sums the batch losses: a host sync every step, timed as it ran
        sched.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, model


def accuracy_check(cfg: TrainConfig, data: Dataset, epochs: int, seeds: int, device: torch.device, workers: int = 8,
                   store=None, name: str = "ablation-baseline") -> dict:
    """Validation accuracy after `epochs` epochs of the seed recipe and of labkit's path, seeds 0..`seeds`-1
    a side, compared (compare_accuracies). labkit's side is `store`'s runs named `name` where it holds them
    (the lab's own baseline runs), else trained (into `store`, if given)."""
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
        if store is None:
            ours.append(train(c, data, progress=False, log=None).summary["final_val_acc"])
            continue
        found = store.find(c, name)
        run = store.get(c, name, data, progress=False, log=None)
        sources.append(run.id + (" (from the store)" if found is not None and found.finished else ""))
        ours.append(run.summary["final_val_acc"])
    return {"epochs": epochs, "seeds": seeds, "labkit_runs": sources, **compare_accuracies(ours, theirs)}


def compare_accuracies(ours: list[float], theirs: list[float]) -> dict:
    """labkit's and the seed recipe's accuracies: each side's mean and SD, the Welch 95% CI of the
    difference, and the difference beside run-to-run noise (the pooled SD of one run). A CI that holds 0
    is weak evidence of equality at a few seeds; its width says how large a difference could hide."""
    a, b, d = estimate(ours, bounds=(0.0, 1.0)), estimate(theirs, bounds=(0.0, 1.0)), welch(ours, theirs)
    pooled = math.nan
    if a.n >= 2 and b.n >= 2:
        pooled = math.sqrt(((a.n - 1) * a.sd**2 + (b.n - 1) * b.sd**2) / (a.n + b.n - 2))
    if math.isnan(d.lo):
        verdict = "too few seeds for an interval"
    elif d.lo <= 0.0 <= d.hi:
        verdict = "no difference shown (95% CI holds 0)"
    else:
        verdict = "labkit differs from the seed recipe"
    return {
        "labkit_val_acc": list(ours),
        "seed_recipe_val_acc": list(theirs),
        "labkit": {"mean": a.mean, "sd": a.sd},
        "seed_recipe": {"mean": b.mean, "sd": b.sd},
        "difference": {"labkit_minus_seed": d.diff, "ci95": [d.lo, d.hi]},
        "noise": {"pooled_sd": pooled,
                  "difference_within_it": None if math.isnan(pooled) else bool(abs(d.diff) <= pooled)},
        "verdict": verdict,
    }


def labkit_epoch_times(cfg: TrainConfig, data: Dataset, epochs: int) -> tuple[list[float], dict]:
    r = train(cfg.replace(epochs=epochs), data, progress=False, log=None)
    return [row["seconds"] for row in r.history], r.summary


def lanes_probe(cfg: TrainConfig, data: Dataset, lanes: int, epochs: int = 3) -> dict:
    """Total images/s of `lanes` copies of a run side by side, as the sweep's lanes run them (threads, a
    CUDA stream each). Every lane ends its warm-up epoch before the clock starts: only overlap counts."""
    barrier = threading.Barrier(lanes + 1)
    ends: list[float] = [0.0] * lanes
    n = min(cfg.train_subset or len(data.train_y), len(data.train_y))
    errors: list[str] = []

    def after_epoch(history: list[dict]) -> None:
        if len(history) == 1:
            torch.cuda.current_stream().synchronize()
            # Wait off the gate: a lane still to capture its graph needs every other lane out.
            GPU_GATE.leave()
            try:
                barrier.wait()
            finally:
                GPU_GATE.enter()

    def one(i: int) -> None:
        try:
            with torch.cuda.stream(torch.cuda.Stream()), GPU_GATE.shared():
                train(cfg.replace(epochs=epochs, seed=cfg.seed + i), data, progress=False, log=None,
                      on_epoch=after_epoch, hooks=LANE_HOOKS)
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


def _side(res: dict, times: list[float], summary: dict | None = None, **about) -> dict:
    """One side's record: its epoch times, the steady epoch (median after the warm-up), its rates, and
    from labkit's run summary, how it trained."""
    steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
    images_per_s = res["train_images_per_epoch"] / steady
    tflops = res["train_gflop_per_image"] * images_per_s / 1e3
    peak = res["bf16_peak_tflops_measured"]
    if summary is not None:
        about = {k: summary[k] for k in ("precision", "step_mode", "graph_fallback")}
    return {"epoch_seconds": times, "steady_epoch_seconds": steady, "images_per_s": images_per_s, **about,
            "achieved_tflops": tflops, "share_of_bf16_peak": tflops / peak if peak else None}


def run_bench(data: Dataset, epochs: int = 3, device_name: str = "auto", workers: int = 8,
              cfg: TrainConfig | None = None, command: str = "") -> dict:
    """The speed record: each side's epoch times and rates, and labkit's speed-up over the seed recipe."""
    device = resolve_device(device_name)
    cfg = (cfg or PAPER).replace(device=device.type)
    res = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command or "python -m benchmarks.bench " + shlex.join(sys.argv[1:]),
        "device": machine_name(device),
        "versions": {"torch": torch.__version__, "python": platform.python_version(), "numpy": np.__version__},
        "data": data.source.get("description"),
        "network": {"lays": list(cfg.lays), "seed_extra_block": cfg.seed_extra_block,
                    "softmax_head": cfg.softmax_head, "width": cfg.width},
        "batch_size": cfg.batch_size,
        "train_images_per_epoch": min(cfg.train_subset or len(data.train_y), len(data.train_y)),
        "train_gflop_per_image": flops_per_image(build_model(cfg)) / 1e9,
        "bf16_peak_tflops_measured": bf16_peak_tflops(device),
    }
    seed_times = seed_recipe(cfg, data, epochs, device, workers)[0]
    res["seed_recipe"] = _side(res, seed_times, precision="fp32", loader_workers=workers)
    times, summary = labkit_epoch_times(cfg, data, epochs)
    res["labkit"] = _side(res, times, summary)
    res["speedup"] = res["seed_recipe"]["steady_epoch_seconds"] / res["labkit"]["steady_epoch_seconds"]
    return res


def _attempt(fn, *args, **kwargs) -> dict:
    """fn's record, or its error's: a part of the benchmark that fails never costs the others."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e)[:500]}"}


def add_compiled(res: dict, cfg: TrainConfig, data: Dataset, epochs: int, compile_mode: str) -> None:
    """labkit's path under torch.compile into a run_bench record (`labkit_compiled`, `speedup_compiled`);
    timed last, as it has never run on the GPU the benchmark is for: its failure is recorded, not raised."""

    def timed() -> dict:  # its first epoch includes compiling
        times, summary = labkit_epoch_times(cfg.replace(compile=compile_mode), data, epochs)
        return _side(res, times, summary)

    c = res["labkit_compiled"] = {"compile": compile_mode, **_attempt(timed)}
    if "error" not in c:
        res["speedup_compiled"] = res["seed_recipe"]["steady_epoch_seconds"] / c["steady_epoch_seconds"]


def format_bench(res: dict) -> str:
    a, b, c = res["seed_recipe"], res["labkit"], res.get("labkit_compiled", {})
    lines = [
        f"device {res['device']}  data: {res['data']}  batch {res['batch_size']}  "
        f"{res['train_images_per_epoch']} images/epoch",
        f"{'':12s} {'s/epoch':>9s} {'img/s':>9s} {'TFLOP/s':>9s} {'of peak':>8s}",
    ]
    for name, s in [("seed recipe", a), ("labkit", b)] + ([("+compile", c)] if c and "error" not in c else []):
        share = f"{100 * s['share_of_bf16_peak']:.1f}%" if s["share_of_bf16_peak"] else "-"
        lines.append(f"{name:12s} {s['steady_epoch_seconds']:9.3f} {s['images_per_s']:9.0f} "
                     f"{s['achieved_tflops']:9.2f} {share:>8s}")
    lines.append(f"speedup labkit / seed recipe: {res['speedup']:.2f}x  (labkit step: {b['step_mode']})")
    if "speedup_compiled" in res:
        lines.append(f"speedup labkit+compile({c['compile']}) / seed recipe: {res['speedup_compiled']:.2f}x  "
                     f"(first epoch with compiling: {c['epoch_seconds'][0]:.1f}s)")
    if "error" in c:
        lines.append(f"labkit+compile({c['compile']}) failed: {c['error']}")
    k = res.get("breakdown", {})
    if "error" in k:
        lines.append(f"step breakdown failed: {k['error']}")
    elif k:
        lines.append(f"labkit step, eager, by kind of op ({k['time']}, {k['op_ms_per_step']:.2f} ms per step "
                     f"of {k['batch_size']}):")
        lines += [f"  {kind:38s} {v['ms_per_step']:8.2f} ms  {100 * v['share']:5.1f}%"
                  for kind, v in k["kinds"].items()]
    if "accuracy" in res:
        lines += _format_accuracy(res["accuracy"])
    for p in res.get("lanes", []):
        done = p["error"] if "error" in p else f"{p['total_images_per_s']:.0f} img/s in total"
        lines.append(f"  {p['lanes']} lane(s) side by side: {done}")
    return "\n".join(lines)


def _format_accuracy(a: dict) -> list[str]:
    d, z = a["difference"], a.get("noise", {})
    lines = [
        f"val acc after {a['epochs']} epochs, {a['seeds']} seed(s): labkit {100 * a['labkit']['mean']:.2f}"
        f" (SD {100 * a['labkit']['sd']:.2f}), seed recipe {100 * a['seed_recipe']['mean']:.2f}"
        f" (SD {100 * a['seed_recipe']['sd']:.2f}); difference {100 * d['labkit_minus_seed']:+.2f} points,"
        f" 95% CI [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]: {a['verdict']}"
    ]
    if z.get("difference_within_it") is not None:
        within = z["difference_within_it"]
        lines.append(
            f"  |difference| {100 * abs(d['labkit_minus_seed']):.2f} points {'<=' if within else '>'} the run-to-run"
            f" SD of one run (pooled, {100 * z['pooled_sd']:.2f} points): {'within' if within else 'beyond'}"
            " run-to-run noise"
        )
    return lines


def _check_args(args) -> None:
    """Every option, and a benchmark on a CPU unless asked for, refused before any work."""
    check_writable(args.out, "--out")
    for wrong, message in [
        (args.accuracy_epochs < 0 or args.accuracy_seeds < 2,
         "--accuracy-epochs must be >= 0 and --accuracy-seeds >= 2 (a confidence interval needs two seeds a side), "
         f"got {args.accuracy_epochs} and {args.accuracy_seeds}"),
        (args.epochs < 2, f"--epochs must be >= 2 (the first of each side is a warm-up), got {args.epochs}"),
        (args.workers < 0, f"--workers must be >= 0 (DataLoader workers of the seed recipe), got {args.workers}"),
        (any(k < 1 for k in args.probe_lanes), f"--probe-lanes takes lane counts >= 1, got {args.probe_lanes}"),
        (args.breakdown_steps < 0, f"--breakdown-steps must be >= 0 (0 = off), got {args.breakdown_steps}"),
        (args.accuracy_runs and not args.accuracy_epochs,
         "--accuracy-runs needs --accuracy-epochs (the accuracy check is off without it)"),
        # The seed's width-64 network over 40,000 images, several epochs a side: hours on a CPU.
        (not (args.cpu_check or args.allow_cpu or torch.cuda.is_available()),
         "torch sees no CUDA GPU: the benchmark times the seed's full network and data on a GPU, and on a "
         "CPU it would run for hours. Use --cpu-check for the small CPU check of the benchmark code, or "
         "--allow-cpu if you really mean to time the full benchmark on this CPU (--workers to fit its cores)"),
    ]:
        if wrong:
            raise ConfigError(message)
    if args.compile:
        PAPER.replace(compile=args.compile)  # a bad mode fails now, not after minutes of benchmark


def _cpu_check_data() -> Dataset:
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:  # read into memory, then gone
        make_synthetic_cifar10(tmp, per_batch=128)
        return load_cifar10(tmp, "seed", allow_download=False)


def main_bench(args) -> int:
    """The speed record, then each further part asked for, saved after each."""
    _check_args(args)
    if args.cpu_check:
        data, cfg, device, epochs = _cpu_check_data(), PAPER.replace(width=8, batch_size=64), torch.device("cpu"), 2
        res = run_bench(data, epochs=epochs, device_name="cpu", workers=0, cfg=cfg, command=args.command)
        res["note"] = "CPU check of the benchmark code on synthetic data and a width-8 net; not a speed figure"
    else:
        data = load_cifar10(args.data_dir, "seed")
        if args.accuracy_runs:  # before minutes of benchmark: its baseline runs must be of these data
            RunStore(args.accuracy_runs).refuse_other_data(
                data.source, args.data_dir or "the default data folder",
                "give --data-dir the data they were trained on, or another --accuracy-runs store",
            )
        cfg, device, epochs = PAPER, torch.device("cuda" if torch.cuda.is_available() else "cpu"), args.epochs
        res = run_bench(data, epochs=epochs, workers=args.workers, command=args.command)

    def save() -> None:  # (check_writable saw its folder)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))

    save()  # before the probe, which runs threads on the GPU: keep what we have
    if args.probe_lanes and torch.cuda.is_available():
        res["lanes"] = []
        for k in sorted({1, *args.probe_lanes}):  # 1 lane measured the same way, evaluation included
            res["lanes"].append({"lanes": k, **_attempt(lanes_probe, PAPER.replace(device="cuda"), data, k)})
            save()
    if args.breakdown_steps:
        res["breakdown"] = _attempt(step_breakdown, cfg.replace(device=device.type), data, steps=args.breakdown_steps)
        save()
    if args.accuracy_epochs:
        store = RunStore(args.accuracy_runs) if args.accuracy_runs else None
        workers = 0 if args.cpu_check else args.workers
        res["accuracy"] = accuracy_check(cfg, data, args.accuracy_epochs, args.accuracy_seeds, device, workers, store)
        save()
    if args.compile:  # last: never run on this GPU before, it must not cost the rest
        add_compiled(res, cfg.replace(device=device.type), data, epochs, args.compile)
        save()
    print(format_bench(res))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.bench`: labkit's errors as one line, as `labkit` prints them."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default $LABKIT_DATA or ./data)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per side; the first is a warm-up (default 3)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers for the seed recipe (default 8)")
    p.add_argument("--cpu-check", action="store_true", help="tiny synthetic run on the CPU (checks the code, not speed)")
    p.add_argument("--allow-cpu", action="store_true", help="let the full benchmark run on a CPU when there is no GPU (hours)")
    p.add_argument("--compile", default="", help="also time labkit's path under torch.compile with this mode, e.g. default")
    p.add_argument("--probe-lanes", type=int, nargs="*", default=[], help="also time N runs side by side, e.g. 2 3")
    p.add_argument("--breakdown-steps", type=int, default=0,
                   help="also profile this many eager steps of labkit's path and sum op time by kind (0 = off)")
    p.add_argument("--accuracy-epochs", type=int, default=0,
                   help="also train both sides this many epochs per seed and compare validation accuracy (0 = off)")
    p.add_argument("--accuracy-seeds", type=int, default=3, help="seeds per side for --accuracy-epochs (default 3)")
    p.add_argument("--accuracy-runs", help="run store whose ablation-baseline runs are labkit's side (trained there if missing)")
    p.add_argument("--out", help="write the JSON result here")
    p.add_argument("--sweep-options", metavar="BENCH_JSON",
                   help="only print the `labkit sweep` options this result chooses (--lanes, --compile, --rate-guess); why, on stderr")
    args = p.parse_args(argv)
    args.command = "python -m benchmarks.bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        if args.sweep_options:
            opts, why = sweep_options(args.sweep_options)
            print(shlex.join(opts))
            print(f"bench chooses: {why}", file=sys.stderr)
            return 0
        return main_bench(args)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, RunError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
