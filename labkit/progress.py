"""What a run says while it trains: one progress line (a tqdm bar in a terminal, an output
updated in place in a notebook), each epoch's line, and on a CPU how long the rest will take."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from .config import TrainConfig

# A run on a CPU projected to take longer than this says so, from its first steps: a
# notebook cell would otherwise sit silent for hours.
CPU_NOTE_S = 600.0


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
    """One line per run, updated epoch by epoch: a tqdm bar on stderr in a terminal; in a
    Jupyter kernel one output updated through its display id, which papermill stores as its
    last state (tqdm's text bars would leave a line per refresh, its widget needs ipywidgets)."""

    def __init__(self, total: int, done: int, desc: str) -> None:
        self.total, self.done, self.desc, self.t0 = total, done, desc, time.perf_counter()
        self.handle = self.bar = None
        shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
        if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
            from IPython.display import display

            self.handle = display({"text/plain": self._line("starting")}, raw=True, display_id=True)
        else:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=desc, unit="ep", leave=False, mininterval=0)  # epochs: draw each

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


def _cpu_note(r, per_step: float, steps_left: int, checkpoint_every: int, log) -> None:
    """Say how long the rest of a CPU run takes, when that is long. Evaluation: the validation
    set every epoch and the test set once, each view of an image a third of a training step."""
    cfg, d = r.cfg, r.d
    epochs_left, n = cfg.epochs - r.start, len(r.d.train_y)
    views = (1 + cfg.tta_flip) * (3 if cfg.tta_translate else 1)
    evals = views * (len(d.val_y) * epochs_left + len(d.test_y)) / (3 * n * epochs_left)
    est = per_step * steps_left * (1 + evals)
    if est > CPU_NOTE_S:
        log(f"note: on the CPU this run needs about {duration(est)} more ({epochs_left} epochs of "
            f"{math.ceil(n / cfg.batch_size)} steps at {per_step:.2f} s a step, timed on its first steps, evaluation "
            f"included); a CUDA GPU, fewer epochs or train_subset make it shorter; {kept_if_interrupted(r.ckpt, checkpoint_every)}")


class CpuNote:
    """On a CPU, times steps 1..k of the first epoch trained here (step 0 warms up; with one
    step an epoch, the epoch) and says how long the rest takes, when that is long."""

    def __init__(self, r, checkpoint_every: int, log) -> None:
        self.r, self.every, self.log, self.t = r, checkpoint_every, log, 0.0
        steps = math.ceil(len(r.d.train_y) / r.cfg.batch_size)
        self.k = min(4, steps - 1) if r.device.type == "cpu" and log else -1

    def __call__(self, step: int | None, steps: int, seconds: float = 0.0) -> None:
        r, k = self.r, self.k
        if k < 0:
            return
        if step is None:  # the first epoch's end
            self.k = -1
            if k == 0:
                _cpu_note(r, seconds, r.cfg.epochs - r.start - 1, self.every, self.log)
        elif k > 0 and step == 0:
            self.t = time.perf_counter()
        elif k > 0 and step == k:
            per_step = (time.perf_counter() - self.t) / k
            _cpu_note(r, per_step, steps * (r.cfg.epochs - r.start) - step - 1, self.every, self.log)


def show_epoch(row: dict, cfg: TrainConfig, has_val: bool, bar: Progress | None, log) -> None:
    """The epoch on the progress bar, or as a line; no validation set: nothing to show, not "nan"."""
    if bar:
        bar.update(f"loss {row['loss_sum']:.2f}" + (f", val {row['val_acc']:.4f}" if has_val else ""))
    elif log:  # metrics.csv keeps every row either way
        log(f"epoch {row['epoch']:3d}/{cfg.epochs}  lr {row['lr']:.3g}  loss_sum {row['loss_sum']:9.4f}  "
            f"train_acc {row['train_acc']:.4f}  " + (f"val_acc {row['val_acc']:.4f}  " if has_val else "")
            + f"{row['seconds']:6.2f}s  {row['images_per_s']:8.0f} img/s")
