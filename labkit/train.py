"""The training loop: data resident on the device, augmentation on the device, one host sync
per epoch, checkpoints that resume exactly; evaluation. It reads top to bottom: set-up,
resume, epochs, finish. The step it runs (CUDA-graphed on a GPU) is labkit.step; the
checkpoint files, labkit.checkpoint. On a CPU the loop is deterministic, which the tests
rely on. Running several runs at once (labkit.scale) plugs in through `Hooks`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import RESUME_KEYS, CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .data import NORMS, Dataset, augment, check_same_data, cutout
from .evaluate import evaluate
from .model import WEIGHT_SHAPE_FIELDS, Dropout, build_model
from .progress import CpuNote, Progress, show_epoch
from .step import Stepper, autocast_dtype, device_name, make_optimizer, prep, resolve_device

__all__ = ["DivergenceError", "Hooks", "TrainResult", "train", "lr_at", "check_fits"]

COMPILE_RECOMPILE_LIMIT = 64


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    config: TrainConfig
    history: list[dict]  # one row per epoch
    summary: dict  # final numbers, timings, where it ran
    model: nn.Module = field(repr=False)  # the weights the summary's numbers come from (with ema: the average)


@dataclass(frozen=True)
class Hooks:
    """How a caller that trains several runs at once plugs into the loop; each default does
    nothing. labkit.scale.sweep's lanes pause between steps and take the GPU alone to seed a
    network and capture a graph; labkit.scale.distributed's group trains one run over ranks."""

    between_steps: Callable[[], None] = lambda: None
    alone: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    group: object | None = None  # labkit.scale.distributed.Group under torchrun


def lr_at(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimiser step `step` (0-based) of epoch `epoch` (0-based)."""
    if cfg.schedule == "exp":  # the student's: multiplied by decay_rate after every epoch (starting over every lr_restart)
        return cfg.lr * cfg.decay_rate ** (epoch % cfg.lr_restart if cfg.lr_restart else epoch)
    t = epoch + step / steps_per_epoch  # in epochs
    if t < cfg.warmup_epochs:
        return cfg.lr * (t + 1 / steps_per_epoch) / cfg.warmup_epochs
    frac = (t - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    if cfg.schedule == "linear":
        return cfg.lr * max(0.0, 1.0 - frac)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def _epoch_seed(cfg: TrainConfig, epoch: int) -> int:
    # Every epoch draws from its own seed, so a run resumed at an epoch boundary sees exactly
    # the permutation, crops, flips and dropout masks it would have seen.
    return (cfg.seed * 1_000_003 + epoch * 7919) % (2**62)


# ---------------------------------------------------------------------------------------
# Checks before anything is written
# ---------------------------------------------------------------------------------------


def check_fits(cfg: TrainConfig, data: Dataset) -> None:
    """Refuse a config the data cannot give what it asks for: another split than the one the
    data were loaded with (the run id names the config's), or train_subset beyond the data
    (it would train on all of it, under another run id than train_subset=0)."""
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a labkit Dataset (from load_cifar10), got {type(data).__name__} {data!r:.80}")
    if data.split is not None and (data.split, data.val_size) != (cfg.split, cfg.val_size):
        raise ConfigError(
            f"the data were loaded with split={data.split!r}, val_size={data.val_size}, but the config asks for "
            f"split={cfg.split!r}, val_size={cfg.val_size}: load them with load_cifar10(data_dir, cfg.split, cfg.val_size)"
        )
    have = len(data.train_y)
    if have == 0:
        raise ConfigError("the training set is empty")
    if cfg.train_subset > have:
        raise ConfigError(f"train_subset={cfg.train_subset} is more than the {have} training images of this split")


def check_init_state(cfg: TrainConfig, state: dict, what: str, theirs: TrainConfig | None = None) -> None:
    """Refuse starting weights (from `what`; trained by `theirs` if known) that do not fit
    cfg's network, in one line naming the mismatch (load_state_dict's lists every tensor)."""
    with torch.device("meta"):  # no memory, no draw from torch's global generator
        want = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    bad = [k for k in want if want[k] != have.get(k)] + [k for k in have if k not in want]  # in the network's order
    if not bad:
        return
    if theirs is not None and any(getattr(theirs, f) != getattr(cfg, f) for f in WEIGHT_SHAPE_FIELDS):
        val = lambda v: f"[{','.join(map(str, v))}]" if isinstance(v, tuple) else v  # noqa: E731
        arch = lambda c: " ".join(f"{f}={val(getattr(c, f))}" for f in WEIGHT_SHAPE_FIELDS)  # noqa: E731
        why = f"its network ({arch(theirs)}) is not this run's ({arch(cfg)})"
    else:
        shape = lambda s: "absent" if s is None else list(s)  # noqa: E731
        why = f"{bad[0]} is {shape(have.get(bad[0]))} there, {shape(want.get(bad[0]))} here"
    raise ConfigError(f"{what}: its weights do not fit this run's network, {len(bad)} of {len(want)} tensors differ: {why}; "
                      "start from a run of the same network")


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


class _Ema:
    """An exponential moving average of a model's weights and BatchNorm buffers, updated after
    every optimiser step (ema = decay * ema + (1 - decay) * weights). Not torch's
    AveragedModel, whose update reads a device counter on the host at every step; integer
    buffers (BatchNorm's batch counter) are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values(), strict=True))
        self._avg = ([e for e, _ in pairs if e.is_floating_point()], [m for e, m in pairs if m.is_floating_point()])
        self._copy = ([e for e, _ in pairs if not e.is_floating_point()], [m for e, m in pairs if not m.is_floating_point()])

    @torch.no_grad()
    def update(self) -> None:
        if self._avg[0]:
            torch._foreach_lerp_(self._avg[0], self._avg[1], 1.0 - self.decay)
        if self._copy[0]:
            torch._foreach_copy_(self._copy[0], self._copy[1])


@dataclass
class _Run:
    """What one run's loop holds: its network and optimiser, data on the device, its state."""

    cfg: TrainConfig
    data: Dataset  # as given: its source is what checkpoints record
    d: Dataset  # on the device, train_subset applied
    device: torch.device
    amp: torch.dtype | None
    model: nn.Module  # unwrapped: evaluated and checkpointed
    net: nn.Module  # what trains (wrapped by DDP, compiled)
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    ema: _Ema | None
    stepper: Stepper
    ckpt: Path | None
    group: object | None  # labkit.scale.distributed.Group under torchrun
    history: list[dict] = field(default_factory=list)
    start: int = 0
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": -1, "state": None})

    @property
    def rank(self) -> int:
        return self.group.rank if self.group is not None else 0

    @property
    def scored(self) -> nn.Module:  # the weights evaluated, selected and tested
        return self.ema.module if self.ema else self.model


def _setup(cfg: TrainConfig, data: Dataset, run_dir, init_state, hooks: Hooks) -> _Run:
    """The run's network, optimiser and data on its device; its folder made."""
    group = hooks.group
    device = resolve_device(cfg.device)
    if group is not None:
        device = group.device(cfg, device)
    if init_state is not None:
        check_init_state(cfg, init_state, "init_state")
    check_fits(cfg, data)  # before the run folder is made: a refused config leaves nothing behind
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    with hooks.alone():  # torch's global generator: no other run may draw from it meanwhile
        torch.manual_seed(cfg.seed)
        model = build_model(cfg)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if init_state is not None:
        model.load_state_dict(init_state)
    net, loss_fn = model, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if group is not None:
        net, loss_fn = group.wrap(model, cfg, device)  # BatchNorm over the global batch (sync_bn), DDP
    optimizer = make_optimizer(cfg, model, device)
    if cfg.compile:
        # Fuses BatchNorm, ReLU and the residual add; compiled at the first step. Each network
        # and batch size a process trains recompiles: past dynamo's limit (8) it would run eagerly.
        net = torch.compile(net, mode=cfg.compile, dynamic=False)
        dyn = torch._dynamo.config
        name = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"  # before torch 2.7
        setattr(dyn, name, max(getattr(dyn, name), COMPILE_RECOMPILE_LIMIT))
    amp = autocast_dtype(cfg, device)
    n = cfg.train_subset or len(data.train_y)
    d = dataclasses.replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n]).to(device)
    stepper = Stepper(net, loss_fn, cfg, device, amp, graphable=group is None, capture_alone=hooks.alone)
    ema = _Ema(model, cfg.ema) if cfg.ema else None
    ckpt = Path(run_dir) / "checkpoint.pt" if run_dir is not None else None
    return _Run(cfg, data, d, device, amp, model, net, loss_fn, optimizer, ema, stepper, ckpt, group)


def _resume(r: _Run, log) -> None:
    """Go on from the run's checkpoint, if it has one: weights, optimiser, history, best epoch."""
    if r.ckpt is None or not r.ckpt.exists():
        return
    state = load_checkpoint(r.ckpt, map_location=r.device, require=RESUME_KEYS)
    saved = TrainConfig.from_dict(state["config"]) if "config" in state else None
    if saved is not None and saved.identity() != r.cfg.identity():
        diff = sorted(k for k, v in r.cfg.identity().items() if saved.identity().get(k) != v)
        raise CheckpointError(f"{r.ckpt}: written by a run with other settings ({', '.join(diff)}); use another run folder")
    # Checkpoints written before they recorded their data have nothing to compare.
    check_same_data(state.get("data"), r.data.source, f"{r.ckpt} (an unfinished run)",
                    "resume it on the data it began on, or use another run folder")
    r.model.load_state_dict(state["model"])
    r.optimizer.load_state_dict(state["optimizer"])
    if r.ema is not None:
        if state.get("ema") is None:
            raise CheckpointError(f"{r.ckpt}: has no moving average of the weights (ema); cannot resume this run from it")
        r.ema.module.load_state_dict(state["ema"])
    r.history, r.start = list(state["history"]), int(state["epoch"]) + 1
    if state.get("best_state") is not None:
        r.best = {"val_acc": state["best_val_acc"], "epoch": state["best_epoch"], "state": state["best_state"]}
    if log:
        log(f"resumed from {r.ckpt} at epoch {r.start}/{r.cfg.epochs}")


def _save(r: _Run, epoch: int) -> None:
    if r.ckpt is None or r.rank != 0:  # under DDP rank 0 writes; the others resume from it
        return
    state = {
        "model": r.model.state_dict(), "ema": r.ema.module.state_dict() if r.ema else None,
        "optimizer": r.optimizer.state_dict(), "epoch": epoch, "history": r.history, "config": r.cfg.to_dict(),
        "data": r.data.source, "device": device_name(r.device),  # for `runs` to show before the run has finished
        "best_state": r.best["state"], "best_val_acc": r.best["val_acc"], "best_epoch": r.best["epoch"],
    }
    save_checkpoint(r.ckpt, state, keep_previous=True)


def _epoch(r: _Run, epoch: int, gen: torch.Generator, drop_gen: torch.Generator, hooks: Hooks, note: Callable) -> dict:
    """Train one epoch; returns its metrics row. `note(step, t)` times a CPU run's first steps."""
    cfg, d, n, group = r.cfg, r.d, len(r.d.train_y), r.group
    steps = math.ceil(n / cfg.batch_size)
    drop_gen.manual_seed(_epoch_seed(cfg, epoch) + r.rank)  # every rank drops its own units
    gen.manual_seed(_epoch_seed(cfg, epoch))  # the same permutation, crops and flips on every rank
    r.model.train()
    if r.device.type == "cuda":
        torch.cuda.current_stream(r.device).synchronize()  # this run's stream only
    t0 = time.perf_counter()
    perm = torch.randperm(n, device=r.device, generator=gen)
    loss_sum = torch.zeros((), device=r.device)
    correct = torch.zeros((), device=r.device, dtype=torch.long)
    for step in range(steps):
        hooks.between_steps()
        idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        xb = augment(d.train_x[idx], generator=gen) if cfg.augment else d.train_x[idx]
        if cfg.cutout:  # before a DDP rank takes its slice: every rank cuts the global batch alike
            xb = cutout(xb, cfg.cutout, NORMS[cfg.norm][0], generator=gen)
        yb = d.train_y[idx]
        if group is not None:
            xb, yb = group.slice(xb, yb)
        for g in r.optimizer.param_groups:
            g["lr"] = lr_at(cfg, epoch, step, steps)
        try:
            loss, out = r.stepper(prep(xb, cfg), yb, r.optimizer)
            r.optimizer.step()  # its state is allocated at the first step: it can run out too
            if r.ema is not None:
                r.ema.update()
        except torch.cuda.OutOfMemoryError:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory at batch_size={cfg.batch_size} (lays={list(cfg.lays)}); lower batch_size or free the GPU"
            ) from None
        loss_sum += loss
        correct += (out.argmax(1) == yb).sum()
        note(step, steps)
    if r.device.type == "cuda":
        torch.cuda.current_stream(r.device).synchronize()
    seconds = time.perf_counter() - t0
    note(None, steps, seconds)
    totals = torch.stack([loss_sum.double(), correct.double()])
    if group is not None:
        group.sum(totals)  # the epoch's one all-reduce of metrics
    loss_total, n_correct = totals.tolist()  # the one host sync of the epoch
    loss_total /= group.world if group is not None else 1  # each rank's loss was world x its share of the mean
    if not math.isfinite(loss_total):
        _diverged(r, epoch, loss_total)
    if group is not None:
        group.sync_buffers([r.model, r.ema.module if r.ema else None])  # rank 0's BatchNorm statistics everywhere
    val_acc, val_loss = evaluate(r.scored, d.val_x, d.val_y, cfg, amp_dtype=r.amp)
    return {"epoch": epoch + 1, "lr": lr_at(cfg, epoch, 0, steps), "loss_sum": loss_total,  # the student's figure: summed batch means
            "loss_mean": loss_total / steps, "train_acc": n_correct / n, "val_acc": val_acc, "val_loss": val_loss,
            "seconds": seconds, "images_per_s": n / seconds}


def _diverged(r: _Run, epoch: int, loss: float) -> None:
    kept = "; nothing diverged was saved"
    if r.ckpt is not None and r.ckpt.exists():
        kept = f"; the last good checkpoint (after epoch {int(load_checkpoint(r.ckpt)['epoch']) + 1}) is kept at {r.ckpt}"
    elif r.ckpt is not None:
        kept = "; no checkpoint was written before it (nothing diverged was saved)"
    lr = lr_at(r.cfg, epoch, 0, math.ceil(len(r.d.train_y) / r.cfg.batch_size))
    raise DivergenceError(f"training loss became {loss} in epoch {epoch + 1} (lr {lr:g}){kept}. "
                          "Lower the learning rate or check the data")


def _finish(r: _Run) -> TrainResult:
    """Test once, with the selected weights; the run's summary."""
    # The gradients (and dropout's mask buffers) live in the CUDA graph's memory pool: let them
    # go, or a caller keeping the returned model keeps that pool alive.
    r.optimizer.zero_grad(set_to_none=True)
    for m in r.model.modules():
        if isinstance(m, Dropout):
            m.static_keep = None
    r.stepper.graph = None
    cfg, scored, best = r.cfg, r.scored, r.best
    final_state = copy.deepcopy(scored.state_dict()) if cfg.select == "best_val" and best["state"] is not None else None
    if final_state is not None:
        scored.load_state_dict(best["state"])
    test_acc, test_loss = evaluate(scored, r.d.test_x, r.d.test_y, cfg, amp_dtype=r.amp)
    if final_state is not None:
        scored.load_state_dict(final_state)
    last, n, seconds = (r.history[-1] if r.history else {}), len(r.d.train_y), sum(h["seconds"] for h in r.history)
    world = r.group.world if r.group is not None else 1
    summary = {
        "epochs": cfg.epochs, "final_loss_sum": last.get("loss_sum"), "final_val_acc": last.get("val_acc"),
        "best_val_acc": max((h["val_acc"] for h in r.history), default=None),
        "selected_epoch": best["epoch"] if final_state is not None else cfg.epochs,
        "test_acc": test_acc, "test_loss": test_loss, "train_seconds": seconds,
        "images_per_s_mean": n * len(r.history) / seconds if seconds else None,
        "device": device_name(r.device), "precision": "bf16" if r.amp else "fp32", "step_mode": r.stepper.mode,
        "compile": cfg.compile or "off", "graph_fallback": r.stepper.graph_error, "train_images": n,
        "world_size": world,  # processes (GPUs) the run trained on, under torchrun
        "batch_norm": "per rank" if world > 1 and not cfg.sync_bn else "global batch",
        "data": r.data.source, "torch": torch.__version__,
    }
    return TrainResult(cfg, r.history, summary, scored)


def train(
    cfg: TrainConfig,
    data: Dataset,
    run_dir: str | os.PathLike | None = None,
    init_state: dict | None = None,
    checkpoint_every: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    on_epoch: Callable[[list[dict]], None] | None = None,
    hooks: Hooks = Hooks(),
) -> TrainResult:
    """Train `cfg` on `data`; with `run_dir`, checkpoint there and resume from it.

    Args:
        init_state: model weights to start from (the student's multi-stage tuning).
        checkpoint_every: epochs between checkpoints (0 = only at the end).
        on_epoch: called with all epochs' metric rows so far, after each epoch's checkpoint.
        hooks: how labkit.scale runs several runs at once (lanes, DDP ranks).
    """
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be an int >= 0 (0 = only at the end), got {checkpoint_every!r}")
    r = _setup(cfg, data, run_dir, init_state, hooks)
    if r.rank != 0:
        progress, log = False, None
    _resume(r, log)
    gen, drop_gen = torch.Generator(device=r.device), torch.Generator(device=r.device)
    for m in r.model.modules():  # dropout draws from the run's own generator, never the global one
        if isinstance(m, Dropout):
            m.generator = drop_gen
    note = CpuNote(r, checkpoint_every, log)
    bar = Progress(cfg.epochs, r.start, f"train {cfg.short_hash()}") if progress and r.start < cfg.epochs else None
    try:  # the bar is closed however the loop ends: an open tqdm bar draws every later bar a line lower
        for epoch in range(r.start, cfg.epochs):
            row = _epoch(r, epoch, gen, drop_gen, hooks, note)
            r.history.append(row)
            if cfg.select == "best_val" and row["val_acc"] > r.best["val_acc"]:
                r.best = {"val_acc": row["val_acc"], "epoch": epoch + 1, "state": copy.deepcopy(r.scored.state_dict())}
            if epoch + 1 == cfg.epochs or (checkpoint_every and (epoch + 1) % checkpoint_every == 0):
                _save(r, epoch)
            if on_epoch:
                on_epoch(r.history)
            show_epoch(row, cfg, len(r.d.val_y) > 0, bar, log)
    finally:
        if bar:
            bar.close()
    return _finish(r)
