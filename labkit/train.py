"""The training loop: data resident on the device, augmentation on the device, one host
sync per epoch, checkpoints that resume exactly; evaluation. The step it runs (CUDA-graphed
on a GPU) is labkit.step; the checkpoint files, labkit.checkpoint. On the CPU the loop is
deterministic, which the tests rely on.

Under torchrun (labkit.distributed) the same loop trains one run over several processes
with DistributedDataParallel: every rank draws the global batch as one process would and
trains on its slice of it, so the run computes what one process would (up to rounding).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .checkpoint import RESUME_KEYS, CheckpointError, evaluated_weights, load_checkpoint, save_checkpoint
from .config import EXECUTION_FIELDS, ConfigError, TrainConfig
from .data import NORMS, Dataset, augment, check_same_data, cutout
from .model import WEIGHT_SHAPE_FIELDS, Dropout, build_model
from .step import GPU_GATE, Stepper, autocast, autocast_dtype, gated, make_optimizer, prep

__all__ = [
    "DivergenceError",
    "TrainResult",
    "train",
    "evaluate",
    "lr_at",
    "resolve_device",
    "check_fits",
]


_INIT_LOCK = threading.Lock()

# A run on the CPU projected to take longer than this gets a note saying how long, from
# its first steps: a notebook cell that would otherwise sit silent for hours.
CPU_NOTE_S = 600.0
COMPILE_RECOMPILE_LIMIT = 64


def kept_if_interrupted(ckpt_path: Path | None, checkpoint_every: int) -> str:
    """What an interrupted run keeps, in words (for notes before a long run)."""
    if ckpt_path is None:
        return "nothing is kept if it is interrupted (no run folder)"
    if checkpoint_every == 0:
        return "nothing is kept if it is interrupted before the end (checkpoint_every=0)"
    every = "every epoch" if checkpoint_every == 1 else f"every {checkpoint_every} epochs"
    return f"interrupted, it resumes from its last checkpoint (written {every}) when asked for again"


def duration(seconds: float) -> str:
    """`seconds` in the unit a reader would say it in: "45 s", "12 min", "11 h", "14 days"."""
    for unit, size, limit in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 172800)):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds / 86400:.0f} days"


class Progress:
    """One line per run that updates in place, epoch by epoch: a tqdm bar on stderr in a
    terminal; in a Jupyter kernel, one output updated through its display id. A notebook then
    keeps one line per run, also once executed by papermill and exported (nbclient applies the
    updates to the stored output), where tqdm's text bars would leave a line per refresh and
    its widget bar needs ipywidgets and leaves no text."""

    def __init__(self, total: int, done: int, desc: str) -> None:
        self.total, self.done, self.desc, self.t0 = total, done, desc, time.perf_counter()
        self.handle = self.bar = None
        shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
        if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
            from IPython.display import display

            self.handle = display({"text/plain": self._line("starting")}, raw=True, display_id=True)
        else:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=desc, unit="ep", leave=False)

    def _line(self, status: str) -> str:
        return f"{self.desc}: epoch {self.done}/{self.total}, {status} ({time.perf_counter() - self.t0:.0f} s)"

    def update(self, status: str) -> None:
        self.done += 1
        if self.handle is not None:
            self.handle.update({"text/plain": self._line(status)}, raw=True)
        else:
            self.bar.set_postfix_str(status, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    config: TrainConfig
    history: list[dict]  # one row per epoch
    summary: dict  # final numbers, timings, where it ran
    model: nn.Module = field(repr=False)  # the weights the summary's numbers come from (with ema: the average)


# ---------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be one of ['auto', 'cpu', 'cuda'], got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU; use device=auto or cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """What a run records as where it ran: the GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def machine_name(device: torch.device) -> str:
    """What a benchmark or a sweep records as where it ran: the GPU's name, or the CPU's
    kind and the threads torch uses, "cpu (x86_64, 16 threads)"."""
    if device.type == "cuda":
        return device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def lr_at(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimiser step `step` (0-based) of epoch `epoch` (0-based)."""
    if cfg.schedule == "exp":  # the seed: multiplied by decay_rate after every epoch
        return cfg.lr * cfg.decay_rate**epoch
    t = epoch + step / steps_per_epoch  # in epochs
    if t < cfg.warmup_epochs:
        return cfg.lr * (t + 1 / steps_per_epoch) / cfg.warmup_epochs
    frac = (t - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    if cfg.schedule == "linear":
        return cfg.lr * max(0.0, 1.0 - frac)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def _epoch_seed(cfg: TrainConfig, epoch: int) -> int:
    # Every epoch draws from its own seed, so a run resumed at an epoch boundary
    # sees exactly the permutation, crops, flips and dropout masks it would have seen.
    return (cfg.seed * 1_000_003 + epoch * 7919) % (2**62)


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def _tta_logits(model: nn.Module, x: Tensor, cfg: TrainConfig) -> Tensor:
    """Logits, averaged over the test-time views the config asks for: the image and its
    mirror (tta_flip); with tta_translate=p, half of it from two copies shifted by p pixels
    up-left and down-right (reflect-padded), each with its mirror too when tta_flip."""

    def views(v: Tensor) -> Tensor:
        out = model(v).float()
        return (out + model(v.flip(3)).float()) / 2 if cfg.tta_flip else out

    out = views(x)
    if cfg.tta_translate:
        p, (h, w) = cfg.tta_translate, x.shape[-2:]
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        shifted = (views(padded[:, :, :h, :w]) + views(padded[:, :, 2 * p : 2 * p + h, 2 * p : 2 * p + w])) / 2
        out = (out + shifted) / 2
    return out


def evaluate(
    model: nn.Module,
    x_u8: Tensor,
    y: Tensor,
    cfg: TrainConfig,
    batch_size: int = 1000,
    amp_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy (of the model's output) on uint8 images."""
    if len(y) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    device = x_u8.device
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss = torch.zeros((), device=device, dtype=torch.float32)
    for i in range(0, len(y), batch_size):
        xb, yb = prep(x_u8[i : i + batch_size], cfg), y[i : i + batch_size]
        try:
            with autocast(device, amp_dtype):
                out = _tta_logits(model, xb, cfg)
        except torch.cuda.OutOfMemoryError:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory in evaluation at batch size {batch_size} (lays={list(cfg.lays)}, "
                f"width={cfg.width}); free the GPU or evaluate in smaller batches"
            ) from None
        loss += F.cross_entropy(out, yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    return correct.item() / len(y), loss.item() / len(y)


# What evaluation alone decides: a finished run can be evaluated again with other values.
EVAL_FIELDS = ("tta_flip", "tta_translate")
# The execution settings evaluation uses; the others (EXECUTION_FIELDS) concern the training step only.
EVAL_EXECUTION_FIELDS = ("device", "precision", "channels_last")


def reevaluate(run_cfg: TrainConfig, checkpoint: Path, data: Dataset, **changes) -> dict:
    """Validation and test accuracy of a finished run's weights (those its `select` chose),
    evaluated with other test-time settings (EVAL_FIELDS) or execution settings
    (EVAL_EXECUTION_FIELDS: device, precision, channels_last).

    Compare the settings on the validation numbers: picking one by its test accuracy is
    model selection on the test set.
    """
    trained = sorted(k for k in changes if k not in EVAL_FIELDS + EXECUTION_FIELDS)
    if trained:
        raise ConfigError(
            f"{trained} change(s) what was trained, not how it is evaluated; "
            f"a run can be evaluated again with other {list(EVAL_FIELDS + EVAL_EXECUTION_FIELDS)}"
        )
    unused = sorted(k for k in changes if k not in EVAL_FIELDS + EVAL_EXECUTION_FIELDS)
    if unused:
        raise ConfigError(
            f"{unused} change(s) only how a run trains (its training step); evaluation does not use them: "
            f"leave them out (it takes {list(EVAL_FIELDS + EVAL_EXECUTION_FIELDS)})"
        )
    cfg = run_cfg.replace(**changes)
    device = resolve_device(cfg.device)
    state = load_checkpoint(checkpoint, map_location=device)
    if int(state.get("epoch", -1)) + 1 != run_cfg.epochs:
        raise CheckpointError(f"{checkpoint}: from epoch {int(state.get('epoch', -1)) + 1} of {run_cfg.epochs}; the run is not finished")
    weights = evaluated_weights(state, run_cfg)
    model = build_model(cfg).to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.load_state_dict(weights)
    amp = autocast_dtype(cfg, device)
    d = data.to(device)
    val_acc, val_loss = evaluate(model, d.val_x, d.val_y, cfg, amp_dtype=amp)
    test_acc, test_loss = evaluate(model, d.test_x, d.test_y, cfg, amp_dtype=amp)
    return {
        "settings": {k: getattr(cfg, k) for k in EVAL_FIELDS},
        "val_acc": val_acc,
        "val_loss": val_loss,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "precision": "bf16" if amp else "fp32",
        "device": device_name(device),
    }


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


class _Ema:
    """An exponential moving average of a model's weights and BatchNorm buffers, updated
    after every optimiser step: ema = decay * ema + (1 - decay) * weights.

    Hand-written rather than torch.optim.swa_utils.AveragedModel, whose update reads a
    device counter on the host (`bool(n_averaged == 0)`) at every step; this one never
    syncs. Integer buffers (BatchNorm's batch counter) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values(), strict=True))
        # Multi-tensor ops, a few kernel launches per step rather than one per tensor.
        self._avg = ([e for e, _ in pairs if e.is_floating_point()], [m for e, m in pairs if m.is_floating_point()])
        self._copy = ([e for e, _ in pairs if not e.is_floating_point()], [m for e, m in pairs if not m.is_floating_point()])

    @torch.no_grad()
    def update(self) -> None:
        if self._avg[0]:
            torch._foreach_lerp_(self._avg[0], self._avg[1], 1.0 - self.decay)
        if self._copy[0]:
            torch._foreach_copy_(self._copy[0], self._copy[1])


class _GlobalMeanLoss(nn.Module):
    """Under DDP: this rank's summed loss over its slice, times world / global batch size.

    DDP averages gradients over the ranks, so the mean of these is the gradient of the
    global batch's mean loss, as in one process, even when the last batch splits unevenly
    (or leaves a rank nothing). Summed over ranks and divided by world: that mean loss.
    """

    def __init__(self, label_smoothing: float, world: int) -> None:
        super().__init__()
        self.label_smoothing, self.world = label_smoothing, world
        self.global_batch = 1  # set before each step

    def forward(self, out: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(out, y, label_smoothing=self.label_smoothing, reduction="sum")
        return loss * (self.world / self.global_batch)


def check_fits(cfg: TrainConfig, data: Dataset) -> None:
    """Refuse a config that the data cannot give what it asks for (before anything is written):
    train_subset beyond the data would train on all of it, under another run id than
    train_subset=0. (A batch beyond the training set is allowed: one full-data step per epoch.)
    """
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a labkit Dataset (from load_cifar10), got {type(data).__name__} {data!r:.80}")
    if data.split is not None and (data.split, data.val_size) != (cfg.split, cfg.val_size):
        # The run id names the config's split: a run trained on another would be filed under it.
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
    """Refuse starting weights that do not fit cfg's network, in one line naming the mismatch
    (load_state_dict's own error lists every tensor), before anything is written.
    `what` names where they come from; `theirs`, the config that trained them, if known."""
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
    raise ConfigError(
        f"{what}: its weights do not fit this run's network, {len(bad)} of {len(want)} tensors differ: {why}; "
        "start from a run of the same network"
    )


@gated
def train(
    cfg: TrainConfig,
    data: Dataset,
    run_dir: str | os.PathLike | None = None,
    init_state: dict | None = None,
    checkpoint_every: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    on_epoch: Callable[[list[dict]], None] | None = None,
) -> TrainResult:
    """Train `cfg` on `data`; with `run_dir`, checkpoint there and resume from it.

    Args:
        init_state: model weights to start from (the seed's multi-stage tuning).
        checkpoint_every: epochs between checkpoints (0 = only at the end).
        on_epoch: called with all epochs' metric rows so far, after each epoch's checkpoint.
    Safe to call from several threads at once (labkit.sweep's lanes).

    Under torchrun (a process group of several ranks, labkit.distributed.init) every rank
    calls this with the same arguments: DDP over the ranks, cfg.batch_size the global batch;
    only rank 0 writes the checkpoint, logs and shows progress.
    """
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be an int >= 0 (0 = only at the end), got {checkpoint_every!r}")
    device = resolve_device(cfg.device)
    ddp, world, rank = distributed.active(), distributed.world(), distributed.rank()
    if ddp:
        if cfg.batch_size % world:
            raise ConfigError(f"batch_size={cfg.batch_size} (the global batch) must divide evenly over {world} processes")
        if device.type == "cuda":
            device = torch.device("cuda", distributed.local_rank())  # one GPU per process
        if rank != 0:
            progress, log = False, None
    if init_state is not None:
        check_init_state(cfg, init_state, "init_state")
    check_fits(cfg, data)  # before the run folder is made: a refused config leaves nothing behind
    amp_dtype = autocast_dtype(cfg, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt" if run_dir else None

    with _INIT_LOCK:  # the global RNG: runs side by side in threads must not interleave here
        torch.manual_seed(cfg.seed)
        model = build_model(cfg)
    if ddp and cfg.sync_bn:
        distributed.convert_batchnorm(model)  # statistics over the global batch, as in one process
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if init_state is not None:
        model.load_state_dict(init_state)
    optimizer = make_optimizer(cfg, model, device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    ema = _Ema(model, cfg.ema) if cfg.ema else None
    scored = ema.module if ema else model  # the weights evaluated, selected and tested

    train_x, train_y = data.train_x, data.train_y
    if cfg.train_subset:
        train_x, train_y = train_x[: cfg.train_subset], train_y[: cfg.train_subset]
    d = dataclasses.replace(data, train_x=train_x, train_y=train_y).to(device)
    n = len(d.train_y)
    steps_per_epoch = math.ceil(n / cfg.batch_size)

    history: list[dict] = []
    start_epoch = 0
    best = {"val_acc": -1.0, "epoch": -1, "state": None}
    if ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device, require=RESUME_KEYS)
        saved = TrainConfig.from_dict(state["config"]) if "config" in state else None
        if saved is not None and saved.identity() != cfg.identity():
            diff = sorted(k for k, v in cfg.identity().items() if saved.identity().get(k) != v)
            raise CheckpointError(f"{ckpt_path}: written by a run with other settings ({', '.join(diff)}); use another run folder")
        # Checkpoints written before they recorded their data have nothing to compare.
        check_same_data(state.get("data"), data.source, f"{ckpt_path} (an unfinished run)", "resume it on the data it began on, or use another run folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(f"{ckpt_path}: has no moving average of the weights (ema); cannot resume this run from it")
            ema.module.load_state_dict(state["ema"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        if state.get("best_state") is not None:
            best = {"val_acc": state["best_val_acc"], "epoch": state["best_epoch"], "state": state["best_state"]}
        if log:
            log(f"resumed from {ckpt_path} at epoch {start_epoch}/{cfg.epochs}")

    net = model  # what trains; `model` (unwrapped) is evaluated and checkpointed
    if ddp:
        # forward_sync_buffers off: with sync_bn every rank's BatchNorm buffers are equal anyway;
        # per-rank ones are made rank 0's before each evaluation (below).
        ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
        loss_fn = _GlobalMeanLoss(cfg.label_smoothing, world)
    if cfg.compile:
        # Fuses BatchNorm, ReLU and the residual add into fewer kernels (BN is memory-bound and
        # a large share of the step); compiled on the first step, evaluation stays eager.
        net = torch.compile(net, mode=cfg.compile, dynamic=False)
        # Each architecture and batch size a process trains recompiles the same forward code;
        # past dynamo's limit (8 a code object) it would quietly run eagerly instead. A sweep
        # of the seed's protocol has about 16 of them.
        dyn = torch._dynamo.config
        name = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"  # before torch 2.7
        setattr(dyn, name, max(getattr(dyn, name), COMPILE_RECOMPILE_LIMIT))
    stepper = Stepper(net, loss_fn, cfg, device, amp_dtype)

    def checkpoint(epoch: int) -> None:
        if ckpt_path is None or rank != 0:  # under DDP rank 0 writes; the others resume from it
            return
        save_checkpoint(
            ckpt_path,
            keep_previous=True,
            state={
                "model": model.state_dict(),
                "ema": ema.module.state_dict() if ema else None,
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "history": history,
                "config": cfg.to_dict(),
                "data": data.source,
                "device": device_name(device),  # where it trains, for `runs` to show before it has finished
                "best_state": best["state"],
                "best_val_acc": best["val_acc"],
                "best_epoch": best["epoch"],
            },
        )

    gen = torch.Generator(device=device)
    # Dropout draws from the run's own generator, never the global one that runs trained
    # side by side in threads share.
    drop_gen = torch.Generator(device=device)
    for m in model.modules():
        if isinstance(m, Dropout):
            m.generator = drop_gen
    train_seconds = sum(r["seconds"] for r in history)
    # On the CPU, time steps 1..k of the first epoch trained here (step 0 warms up) and say
    # how long the run will take when that passes CPU_NOTE_S; one step per epoch: the epoch.
    note_k = min(4, steps_per_epoch - 1) if device.type == "cpu" and log and start_epoch < cfg.epochs else -1
    t_note = 0.0

    def note_cpu_time(per_step: float, steps_left: int) -> None:
        # Evaluation: the validation set every epoch and the test set once, each view of an
        # image about a third of a training image's cost (a forward pass only).
        epochs_left = cfg.epochs - start_epoch
        views = (1 + cfg.tta_flip) * (3 if cfg.tta_translate else 1)
        evals = views * (len(d.val_y) * epochs_left + len(d.test_y)) / (3 * n * epochs_left)
        est = per_step * steps_left * (1 + evals)
        if est <= CPU_NOTE_S:
            return
        log(
            f"note: on the CPU this run needs about {duration(est)} more ({cfg.epochs - start_epoch} epochs of "
            f"{steps_per_epoch} steps at {per_step:.2f} s a step, timed on its first steps, evaluation included); "
            f"a CUDA GPU, fewer epochs or train_subset make it shorter; {kept_if_interrupted(ckpt_path, checkpoint_every)}"
        )

    bar = Progress(cfg.epochs, start_epoch, f"train {cfg.short_hash()}") if progress and start_epoch < cfg.epochs else None
    # Closed however the loop ends (an interrupted cell too): an open tqdm bar would stay in
    # tqdm's list of bars, and every later bar would be drawn a line lower.
    try:
        for epoch in range(start_epoch, cfg.epochs):
            # gen (permutation, crops, flips) is the same on every rank; drop_gen differs per
            # rank, or all ranks would drop the same units of their different images.
            drop_gen.manual_seed(_epoch_seed(cfg, epoch) + rank)
            gen.manual_seed(_epoch_seed(cfg, epoch))
            model.train()
            if device.type == "cuda":
                torch.cuda.current_stream(device).synchronize()  # this run's stream only
            t0 = time.perf_counter()
            perm = torch.randperm(n, device=device, generator=gen)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            lr0 = lr_at(cfg, epoch, 0, steps_per_epoch)
            for step in range(steps_per_epoch):
                GPU_GATE.pause_point()
                idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                xb = d.train_x[idx]
                if cfg.augment:
                    xb = augment(xb, generator=gen)
                if cfg.cutout:  # before a DDP rank takes its slice: every rank cuts the global batch alike
                    xb = cutout(xb, cfg.cutout, NORMS[cfg.norm][0], generator=gen)
                yb = d.train_y[idx]
                if ddp:  # this rank's contiguous slice of the global batch every rank drew
                    lo, hi = len(idx) * rank // world, len(idx) * (rank + 1) // world
                    xb, yb = xb[lo:hi], yb[lo:hi]
                    loss_fn.global_batch = len(idx)
                xb = prep(xb, cfg)
                lr = lr_at(cfg, epoch, step, steps_per_epoch)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                try:
                    loss, out = stepper(xb, yb, optimizer)
                    optimizer.step()  # its state is allocated at the first step: it can run out too
                    if ema is not None:
                        ema.update()
                except torch.cuda.OutOfMemoryError:
                    raise torch.cuda.OutOfMemoryError(
                        f"CUDA out of memory at batch_size={cfg.batch_size} (lays={list(cfg.lays)}); "
                        "lower batch_size or free the GPU"
                    ) from None
                loss_sum += loss
                correct += (out.argmax(1) == yb).sum()
                if note_k > 0 and epoch == start_epoch:  # on a GPU note_k is -1: one comparison a step
                    if step == 0:
                        t_note = time.perf_counter()
                    elif step == note_k:
                        per_step = (time.perf_counter() - t_note) / note_k
                        note_cpu_time(per_step, steps_per_epoch * (cfg.epochs - epoch) - step - 1)
            if device.type == "cuda":
                torch.cuda.current_stream(device).synchronize()  # this run's stream only
            seconds = time.perf_counter() - t0
            if note_k == 0 and epoch == start_epoch:
                note_cpu_time(seconds, cfg.epochs - epoch - 1)
            totals = torch.stack([loss_sum.double(), correct.double()])
            distributed.all_reduce_sum(totals)  # under DDP, the epoch's one all-reduce of metrics
            loss_total, n_correct = totals.tolist()  # the one host sync of the epoch
            loss_total /= world  # each rank's loss was world x its share of the global mean
            if not math.isfinite(loss_total):
                kept = "; nothing diverged was saved"
                if ckpt_path is not None and ckpt_path.exists():
                    good = int(load_checkpoint(ckpt_path)["epoch"]) + 1
                    kept = f"; the last good checkpoint (after epoch {good}) is kept at {ckpt_path}"
                elif ckpt_path is not None:
                    kept = "; no checkpoint was written before it (nothing diverged was saved)"
                raise DivergenceError(
                    f"training loss became {loss_total} in epoch {epoch + 1} (lr {lr0:g}){kept}. "
                    "Lower the learning rate or check the data"
                )
            if ddp:
                # Every rank evaluates the whole validation set with rank 0's model: DDP keeps the
                # weights equal; BatchNorm's running statistics are made rank 0's (they differ per
                # rank with sync_bn off). Rank 0's numbers are the ones recorded.
                for b in [*model.buffers(), *(ema.module.buffers() if ema else [])]:
                    distributed.broadcast_(b)
            val_acc, val_loss = evaluate(scored, d.val_x, d.val_y, cfg, amp_dtype=amp_dtype)
            row = {
                "epoch": epoch + 1,
                "lr": lr0,
                "loss_sum": loss_total,  # the seed's figure: sum of per-batch mean losses
                "loss_mean": loss_total / steps_per_epoch,
                "train_acc": n_correct / n,
                "val_acc": val_acc,
                "val_loss": val_loss,
                "seconds": seconds,
                "images_per_s": n / seconds,
            }
            history.append(row)
            train_seconds += seconds
            if cfg.select == "best_val" and val_acc > best["val_acc"]:
                best = {"val_acc": val_acc, "epoch": epoch + 1, "state": copy.deepcopy(scored.state_dict())}
            last = epoch + 1 == cfg.epochs
            if last or (checkpoint_every and (epoch + 1) % checkpoint_every == 0):
                checkpoint(epoch)
            if on_epoch:
                on_epoch(history)
            if bar:
                # no validation set (split "full", val_size 0): nothing to show, not "nan"
                bar.update(f"loss {row['loss_sum']:.2f}" + (f", val {val_acc:.4f}" if len(d.val_y) else ""))
            elif log:  # the bar shows the epoch; metrics.csv keeps every row either way
                log(
                    f"epoch {epoch + 1:3d}/{cfg.epochs}  lr {lr0:.3g}  loss_sum {loss_total:9.4f}  "
                    f"train_acc {row['train_acc']:.4f}  " + (f"val_acc {val_acc:.4f}  " if len(d.val_y) else "")
                    + f"{seconds:6.2f}s  {n / seconds:8.0f} img/s"
                )
    finally:
        if bar:
            bar.close()
    # The gradients (and dropout's mask buffers) live in the CUDA graph's memory pool: let
    # them go, or a caller keeping the returned model keeps that pool alive.
    optimizer.zero_grad(set_to_none=True)
    for m in model.modules():
        if isinstance(m, Dropout):
            m.static_keep = None
    stepper.graph = None

    final_state = None
    if cfg.select == "best_val" and best["state"] is not None:
        final_state = copy.deepcopy(scored.state_dict())
        scored.load_state_dict(best["state"])
    test_acc, test_loss = evaluate(scored, d.test_x, d.test_y, cfg, amp_dtype=amp_dtype)
    sel_epoch = best["epoch"] if final_state is not None else cfg.epochs
    if final_state is not None:
        scored.load_state_dict(final_state)
    last = history[-1] if history else {}
    summary = {
        "epochs": cfg.epochs,
        "final_loss_sum": last.get("loss_sum"),
        "final_val_acc": last.get("val_acc"),
        "best_val_acc": max((r["val_acc"] for r in history), default=None),
        "selected_epoch": sel_epoch,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "train_seconds": train_seconds,
        "images_per_s_mean": n * len(history) / train_seconds if train_seconds else None,
        "device": device_name(device),
        "precision": "bf16" if amp_dtype else "fp32",
        "step_mode": stepper.mode,
        "compile": cfg.compile or "off",
        "graph_fallback": stepper.graph_error,
        "train_images": n,
        "world_size": world,  # processes (GPUs) the run trained on, under torchrun
        "batch_norm": "per rank" if ddp and not cfg.sync_bn else "global batch",
        "data": data.source,
        "torch": torch.__version__,
    }
    return TrainResult(cfg, history, summary, scored)
