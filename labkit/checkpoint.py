"""Checkpoints: atomic writes that keep the one before, safe loads (weights_only, CRCs checked), recovery."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from .config import TrainConfig


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or carries code."""


class DiskFullError(OSError):
    """A write found no space left on its device (errno ENOSPC); its message is one line."""


# What train() needs to resume; a checkpoint without them is not one it can resume from.
RESUME_KEYS = ("model", "optimizer", "epoch", "history")


def previous_checkpoint(path: Path) -> Path:
    """Where save_checkpoint(keep_previous=True) keeps the one it replaced: checkpoint.pt -> checkpoint.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _no_space(e: BaseException | None) -> bool:
    """Whether `e` comes from a full disk: torch's zip writer raises a RuntimeError of its own (without the
    path), the OSError in its __context__."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n:,} bytes"


class _Counter:
    """A file that only counts the bytes written to it: the size a failed write needed."""

    n = 0

    def write(self, b) -> int:
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        pass


def atomic_write(path: Path, write: Callable, before_rename: Callable[[], None] | None = None) -> None:
    """`write(f)` into a temp file in the same folder, fsync, rename: readers see the old file or the new one,
    never half of one, and a failed write leaves no temp file; a full disk is a DiskFullError in one line."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if not _no_space(e):
            raise
        write(need := _Counter())
        err = DiskFullError(
            f"no space left on the device of {path.parent}: writing {path.name} needs about {_size(need.n)} "
            f"(its size, without the filesystem's overhead), {_size(shutil.disk_usage(path.parent).free)} are free; "
            f"{path.name} is as it was and no temporary file is left: free some space and run the same command again"
        )
        err.errno = errno.ENOSPC
        raise err from None
    with contextlib.suppress(OSError):  # make the rename durable, where the filesystem allows it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(path: Path, state: dict, keep_previous: bool = False) -> None:
    """Write a checkpoint with atomic_write; keep_previous: first keep the one it replaces as
    previous_checkpoint(path), the fallback if `path` is found corrupted (hard-linked, then renamed into place,
    so `path` holds a complete checkpoint whenever a kill lands)."""
    path = Path(path)
    prev = previous_checkpoint(path)
    link = prev.with_name(f".{prev.name}.{os.getpid()}.tmp")

    def keep() -> None:
        if keep_previous and path.is_file():
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)
            except OSError:  # a filesystem without hard links: copy
                shutil.copyfile(path, link)
            os.replace(link, prev)

    try:
        atomic_write(path, lambda f: torch.save(state, f), keep)
    except BaseException:
        link.unlink(missing_ok=True)
        raise


def _archive_problem(path: Path) -> str | None:
    """torch.load never checks the CRC-32s of torch.save's zip members: checked here, a flipped byte in the
    weights is caught, not trained on."""
    if not zipfile.is_zipfile(path):
        return None  # truncated (no central directory) or the legacy format: torch.load decides
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"corrupted ({type(e).__name__}: {e})"
    return f"corrupted: member {bad} fails its CRC check" if bad else None


def _load_failure(e: Exception) -> str:
    """What torch.load(weights_only=True) refused, in one line (its own text advises weights_only=False,
    which would run whatever the file carries)."""
    text = str(e)
    wanted = re.search(r"GLOBAL ([\w.]+)", text)
    if wanted:
        return (
            f"refused: it carries code or objects other than tensors (it asks for {wanted.group(1)}); "
            "nothing in it was run. Only load checkpoints written by labkit"
        )
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(skip) and "weights_only" not in ln]
    detail = f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
    return f"unreadable: truncated or corrupted ({detail})"


def load_checkpoint(path: Path, map_location="cpu", require: tuple[str, ...] = ("model",)) -> dict:
    """A checkpoint loaded with weights_only=True (tensors and plain data, never code); CheckpointError naming
    the file when it is missing, truncated, corrupted, carries code or lacks a `require`d entry."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    problem = _archive_problem(path)
    if problem:
        raise CheckpointError(f"{path}: checkpoint {problem}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: checkpoint {_load_failure(e)}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a labkit checkpoint (no 'model' entry)")
    missing = [k for k in require if k not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {missing}; cannot resume from it")
    return state


def evaluated_weights(state: dict, cfg: TrainConfig) -> dict:
    """The weights a run's test numbers come from: selected on validation (select 'best_val'), else the moving
    average (ema), else the last ones."""
    if cfg.select == "best_val" and state.get("best_state") is not None:
        return state["best_state"]
    return state.get("ema") or state["model"]


def _set_aside(path: Path) -> Path:
    """Rename a bad file to <stem>.corrupt-<time>[-n]<suffix>, keeping it for inspection."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(1000):
        bad = path.with_name(f"{path.stem}.corrupt-{stamp}{'' if n == 0 else f'-{n}'}{path.suffix}")
        if not bad.exists():
            break
    os.replace(path, bad)
    return bad


def recover_checkpoint(d: Path, log: Callable[[str], None] | None = print) -> dict | None:
    """The state of `d/checkpoint.pt`, or None: one that fails to load is moved aside, saying so, and the
    previous good one (checkpoint.prev.pt) takes its place; with none left the run starts from scratch."""
    log = log or (lambda _: None)
    ckpt = d / "checkpoint.pt"
    prev = previous_checkpoint(ckpt)
    bad_seen = False
    for cand in (ckpt, prev):
        if not cand.is_file():
            continue
        try:
            state = load_checkpoint(cand, require=RESUME_KEYS)
        except CheckpointError as e:
            bad_seen = True
            bad = _set_aside(cand)
            log(f"{e}; moved aside to {bad.name}")
            continue
        if cand == prev:
            os.replace(prev, ckpt)
            log(f"{d.name}: resuming from the previous good checkpoint {prev.name} "
                f"(after epoch {int(state['epoch']) + 1}); {ckpt.name} was corrupted or missing")
        return state
    if bad_seen:
        log(f"{d.name}: no good checkpoint left; training this run from the start")
    return None
