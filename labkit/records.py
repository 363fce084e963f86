"""A run's records: config.json (its name and resolved config), metrics.csv (a row per epoch),
summary.json (written last: the run finished), each read and checked against the others and
the folder's name, so that a damaged record is named, never read as good; written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .checkpoint import atomic_write
from .config import ConfigError, TrainConfig


class RunError(RuntimeError):
    """A run folder is incomplete, corrupted or belongs to another config."""


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def code_version() -> str:
    """$LABKIT_CODE_VERSION (set where the tree travels without .git), else `git describe`."""
    if os.environ.get("LABKIT_CODE_VERSION"):
        return os.environ["LABKIT_CODE_VERSION"]
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(eq=False)
class Run:
    id: str
    name: str
    dir: Path
    config: TrainConfig
    summary: dict | None  # None while unfinished
    history: pd.DataFrame

    def _key(self) -> tuple:  # the same record in the same state (a DataFrame has no truth value, NaN != NaN)
        return (self.id, str(self.dir), self.finished, (self.summary or {}).get("finished_at"), len(self.history))

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, Run) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint.pt"


# The one rule for run names and ids (train --name, init_from, eval RUN): ASCII, no
# separators, no '..' escapes, no hidden folder; the folder name must fit 255 bytes.
NAME_RULE = "letters, digits, '.', '_' or '-', not starting with '.'"
MAX_NAME = 200


def safe_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and all((ch.isascii() and ch.isalnum()) or ch in "._-" for ch in name)


def check_run_id(run_id: object, what: str = "run") -> None:
    if not isinstance(run_id, str) or not safe_name(run_id):
        raise ConfigError(f"{what} must be a run id (a folder name in the run store, e.g. modern-777d574203: {NAME_RULE}), got {run_id!r}")


def write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_metrics(path: Path) -> pd.DataFrame:
    """metrics.csv, checked: a header with 'epoch', rows of as many fields, epochs 1, 2, ..."""
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame()

    def bad(why: str) -> RunError:
        return RunError(f"{path}: corrupted metrics ({why}); expected a header with 'epoch' and one row per epoch")

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 text: {e}") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or "epoch" not in rows[0]:
        raise bad(f"header {rows[0][:5] if rows else []}")
    for i, r in enumerate(rows[1:], 2):
        if len(r) != len(rows[0]):
            raise bad(f"line {i} has {len(r)} fields, the header {len(rows[0])}")
    hist = pd.read_csv(io.StringIO(text))
    if list(hist["epoch"]) != list(range(1, len(hist) + 1)):
        raise bad(f"epochs {list(hist['epoch'])[:10]}")
    return hist


# What every finished run's summary.json holds; numbers where it has them, null only where
# train() writes it (no validation set, no timing).
SUMMARY_KEYS = ("epochs", "final_loss_sum", "final_val_acc", "best_val_acc", "test_acc", "train_seconds")
SUMMARY_NUMBERS = (*SUMMARY_KEYS, "selected_epoch", "test_loss", "train_images", "world_size", "wall_seconds", "images_per_s_mean")
NULLABLE = ("final_val_acc", "best_val_acc", "images_per_s_mean")
# A run's files; summary.json last, so that a retrain sets it aside only once the rest is.
RUN_FILES = ("checkpoint.pt", "checkpoint.prev.pt", "metrics.csv", "summary.json")
REPLACED = ".replaced"  # where a retrain keeps the finished run until the new one finishes


def record_files(d: Path) -> list[str]:
    """The run files in `d`: a folder holding any is a run's, with or without its config.json."""
    return [f for f in RUN_FILES if (d / f).exists()]


def read_config(d: Path) -> tuple[str, TrainConfig]:
    """A run's name and config, checked against its folder's name (`<name>-<hash>`): a config
    edited by hand would pass for the one trained."""
    path = d / "config.json"
    fix = f"put back the config.json the run was trained with (git checkout, a backup), or move the folder {d} out of the store"
    if not path.is_file():
        held = record_files(d)
        raise RunError(f"{d}: no config.json; " + (f"a damaged run folder (it holds {', '.join(held)}): {fix}" if held else "not a run folder"))
    try:
        meta = json.loads(path.read_text())
        cfg = TrainConfig.from_dict(meta["config"])
        name = meta.get("name", d.name.rsplit("-", 1)[0])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, ConfigError, TypeError) as e:
        raise RunError(f"{path}: unreadable run config ({e}); {fix}") from None
    if d.name != f"{name}-{cfg.short_hash()}":
        raise RunError(f"{path}: a different config (or name) than its folder {d.name} names: it is run {name}-{cfg.short_hash()} "
                       f"(edited by hand?); {fix}")
    return name, cfg


def read_summary(path: Path, cfg: TrainConfig, epochs_in_metrics: int) -> dict:
    """summary.json, checked: SUMMARY_KEYS, numbers where numbers belong, as many epochs as
    its config and metrics.csv."""
    fix = ("restore the file (git checkout, a backup), or move summary.json aside (e.g. to summary.corrupt.json) and ask for the run "
           "again: it resumes from its last checkpoint, rewriting metrics.csv and summary.json and training nothing that checkpoint "
           "holds (without checkpoint.pt it trains the run again, as --retrain would)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: corrupted ({e}); {fix}") from None
    if not isinstance(summary, dict):
        raise RunError(f"{path}: corrupted (a JSON {type(summary).__name__}, not a run summary); {fix}")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise RunError(f"{path}: corrupted (not a run summary: no {', '.join(missing)}); {fix}")
    wrong = [f"{k} is {v!r}" for k in SUMMARY_NUMBERS if k in summary
             and not (type(v := summary[k]) in (int, float) or (v is None and k in NULLABLE))]
    if wrong:
        raise RunError(f"{path}: damaged ({', '.join(wrong)}, not a number); {fix}")
    if summary["epochs"] != cfg.epochs or summary.get("config_hash", cfg.short_hash()) != cfg.short_hash():
        raise RunError(f"{path}: damaged (it is of {summary['epochs']} epochs, config hash {summary.get('config_hash')}; "
                       f"config.json: {cfg.epochs} epochs, hash {cfg.short_hash()}); {fix}")
    if epochs_in_metrics != cfg.epochs:
        raise RunError(f"{path.with_name('metrics.csv')}: damaged (it holds {epochs_in_metrics} epochs, the finished run "
                       f"{cfg.epochs}); {fix}")
    return summary


def restore_replaced(d: Path, log: Callable[[str], None] | None) -> None:
    """Put back a finished run that a failed (or killed) retrain set aside."""
    keep = d / REPLACED
    if not keep.is_dir():
        return
    if (keep / "summary.json").exists():  # all of the old run was set aside: d holds the failed new one
        for f in RUN_FILES:
            (d / f).unlink(missing_ok=True)
    for f in RUN_FILES:
        if (keep / f).exists():
            os.replace(keep / f, d / f)
    shutil.rmtree(keep, ignore_errors=True)
    if log:
        log(f"{d.name}: the retrain did not finish; the finished run it would have replaced is back")


def recorded(run: Run, key: str = "data"):
    """What a run recorded under `key`: a finished run in its summary, an unfinished one in its
    checkpoint (tensors left on disk); None where nothing says."""
    if run.finished:
        return run.summary.get(key)
    try:
        return torch.load(run.checkpoint, map_location="cpu", weights_only=True, mmap=True).get(key)
    except Exception:  # none yet, or damaged: its resume says which
        return None
