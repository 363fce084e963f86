"""The run store: one folder per (name, config), trained once, found again afterwards.

    runs/<name>-<hash of the config>/
        config.json         the resolved config, written before training
        metrics.csv         one row per epoch, rewritten atomically after each epoch
        checkpoint.pt       the latest checkpoint (not in git); checkpoint.prev.pt the one before
        summary.json        written last: its presence means the run finished

A finished run is handed back without training; a stopped one (even killed) resumes from
its checkpoint; two processes asking for the same run serialise on a lock. Every record is
checked against the others when read: a damaged run is named, never handed back.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import fcntl
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .checkpoint import atomic_write, load_checkpoint, recover_checkpoint
from .config import ConfigError, TrainConfig
from .data import DataError, Dataset, check_same_data, file_in_the_way, in_the_way, same_data

__all__ = ["Run", "RunStore", "RunError", "atomic_write_text", "command_line", "code_version", "check_writable", "check_run_id"]


class RunError(RuntimeError):
    """A run folder is incomplete, corrupted or belongs to another config."""


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def check_writable(path: str | None, flag: str) -> None:
    """Fail before any work when a result file could not be written at the end. Makes no
    folder: a mistyped path would leave folders wherever it points."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file name")
    blocker = file_in_the_way(p.parent)
    if blocker is not None:
        raise ConfigError(f"{flag} {path}: cannot write there: {in_the_way(blocker)}, not a folder")
    if not p.parent.is_dir():
        raise ConfigError(f"{flag} {path}: cannot write there: the folder {p.parent} does not exist; "
                          f"make it first (mkdir -p {p.parent}) or give a file in a folder that exists")
    try:
        probe = p.with_name(f".{p.name}.probe")
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None


def command_line(args: list[str] | None = None) -> str:
    """How a result was made: `python -m labkit ARGS` (default: this process's), without the
    absolute path of labkit's __main__.py that sys.argv[0] holds."""
    return "python -m labkit " + shlex.join(sys.argv[1:] if args is None else args)


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

    def __eq__(self, other: object) -> bool:
        # The same record in the same state (a DataFrame has no truth value; NaN is not equal to itself).
        return self._key() == other._key() if isinstance(other, Run) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return (self.id, str(self.dir), self.finished, (self.summary or {}).get("finished_at"), len(self.history))

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


def _safe_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and all((ch.isascii() and ch.isalnum()) or ch in "._-" for ch in name)


def check_run_id(run_id: object, what: str = "run") -> None:
    if not isinstance(run_id, str) or not _safe_name(run_id):
        raise ConfigError(f"{what} must be a run id (a folder name in the run store, e.g. modern-777d574203: {NAME_RULE}), got {run_id!r}")


def _write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _read_metrics(path: Path) -> pd.DataFrame:
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


def _records(d: Path) -> list[str]:
    """The run files in `d`: a folder holding any is a run's, with or without its config.json."""
    return [f for f in RUN_FILES if (d / f).exists()]


def _read_config(d: Path) -> tuple[str, TrainConfig]:
    """A run's name and config, checked against its folder's name (`<name>-<hash>`): a config
    edited by hand would pass for the one trained."""
    path = d / "config.json"
    fix = f"put back the config.json the run was trained with (git checkout, a backup), or move the folder {d} out of the store"
    if not path.is_file():
        held = _records(d)
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


def _read_summary(path: Path, cfg: TrainConfig, epochs_in_metrics: int) -> dict:
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


def _restore_replaced(d: Path, log: Callable[[str], None] | None) -> None:
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


def recorded(run: Run, key: str):
    """What a run recorded under `key` ("data", "device"): a finished run in its summary, an
    unfinished one in its checkpoint (tensors left on disk); None where nothing says."""
    if run.finished:
        return (run.summary or {}).get(key)
    import torch

    try:
        return torch.load(run.dir / "checkpoint.pt", map_location="cpu", weights_only=True, mmap=True).get(key)
    except Exception:  # none yet, or damaged: its resume says which
        return None


def recorded_data(run: Run) -> dict | None:
    return recorded(run, "data")


class RunStore:
    """A folder of runs (default `$LABKIT_RUNS`, else ./runs). `get` hands back a finished run
    or trains it; `find`/`load` read without training; `all`, `table`, `history` list them."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else Path(os.environ.get("LABKIT_RUNS", "runs"))
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"{self.root} is a file, not a run store folder: give a folder (it is made when a run is trained)")
        if (self.root / "config.json").is_file():  # runs would be made inside this run's folder
            raise RunError(f"{self.root}: a run folder, not a run store; its store is {self.root.parent}")

    @staticmethod
    def run_id(cfg: TrainConfig, name: str) -> str:
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig (e.g. labkit.preset('seed')), got {type(cfg).__name__} {cfg!r:.80}")
        if not isinstance(name, str):
            raise TypeError(f"run name must be a string, got {type(name).__name__} {name!r:.80}")
        if not _safe_name(name):
            raise ConfigError(f"run name must be {NAME_RULE}, got {name!r}")
        if len(name) > MAX_NAME:
            raise ConfigError(f"run name must be at most {MAX_NAME} characters, got {len(name)}")
        return f"{name}-{cfg.short_hash()}"

    def path(self, run_id: str) -> Path:
        return self.root / run_id

    def load(self, run_id: str) -> Run:
        """A run from its records, checked against each other (a RunError names the file)."""
        d = self.path(run_id)
        if not d.exists():
            raise RunError(f"no run {run_id} in {self.root} (`labkit runs --runs-dir {self.root}` lists them)")
        name, cfg = _read_config(d)
        hist = _read_metrics(d / "metrics.csv")
        summary = _read_summary(d / "summary.json", cfg, len(hist)) if (d / "summary.json").is_file() else None
        return Run(run_id, name, d, cfg, summary, hist)

    def find(self, cfg: TrainConfig, name: str) -> Run | None:
        d = self.path(self.run_id(cfg, name))
        return self.load(d.name) if (d / "config.json").is_file() or _records(d) else None

    def run_dirs(self) -> list[Path]:
        """The run folders, damaged ones too (those that hold a run's files without config.json)."""
        if not self.root.is_dir():
            return []
        return [p for p in sorted(self.root.iterdir()) if (p / "config.json").is_file() or _records(p)]

    def all(self) -> list[Run]:
        return [self.load(p.name) for p in self.run_dirs()]

    def on_other_data(self, source: dict) -> list[Run]:
        """The runs trained (or begun) on other files than `source` describes; unreadable runs
        are left to whoever reads them."""
        out = []
        for p in self.run_dirs():
            try:
                r = self.load(p.name)
            except RunError:
                continue
            if not same_data(recorded_data(r), source):
                out.append(r)
        return out

    def refuse_other_data(self, source: dict, data_at, fix: str, *, only=None, error: type[Exception] = DataError) -> None:
        """Raise `error` (ending in `fix`) when runs here (with an id in `only`, if given) were
        trained on other files than `source`, the data at `data_at`: run ids name no data."""
        other = [r for r in self.on_other_data(source) if only is None or r.id in only]
        if other:
            raise error(f"{len(other)} run(s) in {self.root} (finished, or begun) were trained on other data "
                        f"({self.data_of(other)}) than {data_at} ({source['description']}): {fix}")

    @staticmethod
    def data_of(runs: Iterable[Run]) -> str:
        return "; ".join(sorted({str((recorded_data(r) or {}).get("description")) for r in runs}))

    def set_aside_code(self, versions: Iterable[str], dest: str | os.PathLike) -> list[str]:
        """Move the finished runs trained by code `versions` (a commit also matches "commit+change")
        to `dest`, so that a sweep trains them again; a run in training or a name taken in
        `dest` stops the move before anything moved."""
        versions = [v for v in versions if v]
        if not versions:
            raise RunError("set aside: name at least one code version (e.g. 3887dc1)")
        dest = Path(dest)
        if dest.resolve().is_relative_to(self.root.resolve()):
            raise RunError(f"set aside: {dest} lies in the run store {self.root}; give a folder outside it")
        picked = [r for r in self.all() if r.finished and {str(r.summary.get("code_version", "")),
                                                            str(r.summary.get("code_version", "")).split("+")[0]} & set(versions)]
        clash = [r.id for r in picked if (dest / r.id).exists()]
        if clash:
            raise RunError(f"set aside: {dest} already holds {', '.join(clash)}; nothing moved")
        with contextlib.ExitStack() as held:
            for r in picked:  # every lock first: a run in training stops the whole move
                held.enter_context(self._lock(self.path(r.id), wait=False, log=None))
            dest.mkdir(parents=True, exist_ok=True)
            for r in picked:
                shutil.move(str(self.path(r.id)), str(dest / r.id))
        return [r.id for r in picked]

    def table(self, runs: Iterable[Run] | None = None) -> pd.DataFrame:
        """One row per run: id, name, every config field, the summary's numbers."""
        rows = []
        for r in self.all() if runs is None else runs:
            row = {"run": r.id, "name": r.name, "finished": r.finished}
            row.update({k: (str(v) if isinstance(v, list) else v) for k, v in r.config.to_dict().items()})
            row.update({k: v for k, v in (r.summary or {}).items() if not isinstance(v, (dict, list))})
            if r.summary and isinstance(r.summary.get("data"), dict):
                row["data"] = r.summary["data"].get("description")
            rows.append(row)
        return pd.DataFrame(rows)

    def history(self, runs: Iterable[Run] | None = None) -> pd.DataFrame:
        """All epochs of all runs, one row per (run, epoch)."""
        frames = [r.history.assign(run=r.id, name=r.name, seed=r.config.seed)[["run", "name", "seed", *r.history.columns]]
                  for r in (self.all() if runs is None else runs) if len(r.history)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # -- training -------------------------------------------------------------------------

    def _parent_weights(self, cfg: TrainConfig) -> dict:
        """The final weights of the finished run cfg.init_from, checked to fit cfg's network."""
        from .train import check_init_state

        check_run_id(cfg.init_from, "init_from")
        d = self.path(cfg.init_from)
        if not (d / "summary.json").is_file():  # a checkpoint midway holds no final weights
            where = "is not finished in" if (d / "config.json").is_file() else "is not in"
            raise RunError(f"init_from: run {cfg.init_from} {where} {self.root}; train it first")
        weights = load_checkpoint(d / "checkpoint.pt")["model"]
        check_init_state(cfg, weights, f"init_from: run {cfg.init_from}", self.load(cfg.init_from).config)
        return weights

    @contextlib.contextmanager
    def _lock(self, d: Path, wait: bool, log):
        """The run's lock (released by the kernel if the process dies); yields whether it waited."""
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot make the run folder {d} ({e.strerror}): give a run store you can write to") from None
        with open(d / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                waited = False
            except BlockingIOError:
                if not wait:
                    raise RunError(f"{d}: another process is training this run; try again when it ends") from None
                if log:
                    log(f"waiting: another process is training {d.name}")
                fcntl.flock(f, fcntl.LOCK_EX)
                waited = True
            try:
                yield waited
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def get(self, cfg: TrainConfig, name: str, data: Dataset | Callable[[], Dataset], *, retrain: bool = False,
            wait: bool = True, checkpoint_every: int = 1, progress: bool = True, log: Callable[[str], None] | None = print,
            on_epoch: Callable[[list[dict]], None] | None = None, on_train: Callable[[], None] | None = None, hooks=None) -> Run:
        """The finished run of `cfg` under `name`: handed back if done, else trained (or resumed).

        `data` may be a callable, so that finished runs never load the data. `on_epoch` sees
        the metric rows after each stored epoch (raising there stops the run resumably);
        `on_train` is called once the folder is ready, before training; `hooks` go to the loop.
        """
        from .train import Hooks, check_fits

        rid = self.run_id(cfg, name)
        d = self.path(rid)
        if not retrain and (d / "summary.json").is_file():
            return self._finished(rid, data)
        # Before the folder exists: a missing parent or unreadable data leave nothing behind.
        init_state = self._parent_weights(cfg) if cfg.init_from else None
        dataset = data() if callable(data) else data
        check_fits(cfg, dataset)
        train_kw = {"init_state": init_state, "checkpoint_every": checkpoint_every, "progress": progress, "log": log,
                    "hooks": hooks or Hooks()}
        with self._lock(d, wait, log) as waited:
            _restore_replaced(d, log)  # a retrain killed before it could put the old run back
            if not retrain and (d / "summary.json").is_file():  # finished while we waited
                if waited and log:
                    log(f"{rid}: the other process finished it; its result is used, nothing trained here")
                return self._finished(rid, dataset)
            for tmp in d.glob(".*.tmp"):  # temp files of a process killed mid-write: never read
                tmp.unlink(missing_ok=True)
            if retrain:  # set aside, not deleted: the finished run comes back if the new one fails
                (d / REPLACED).mkdir(exist_ok=True)
                for f in _records(d):
                    os.replace(d / f, d / REPLACED / f)
            try:
                self._train_here(d, rid, cfg, name, dataset, train_kw, on_epoch, on_train)
            except BaseException:
                if retrain:
                    _restore_replaced(d, log)
                raise
            shutil.rmtree(d / REPLACED, ignore_errors=True)
        return self.load(rid)

    def _finished(self, rid: str, data: Dataset | Callable[[], Dataset]) -> Run:
        """A finished run, refused for other data than it was trained on; a loader is not called."""
        from .train import check_fits

        run = self.load(rid)
        if isinstance(data, Dataset):
            check_fits(run.config, data)
            check_same_data(run.summary.get("data"), data.source, f"run {rid} in {self.root}",
                            "give the data it was trained on, retrain it (--retrain, or retrain=True), or use another run store")
        return run

    def _train_here(self, d, rid, cfg, name, dataset, train_kw: dict, on_epoch, on_train) -> None:
        """get's training, in the run's locked folder: records, resume point, loop, summary."""
        from .train import train  # at call time: tests replace labkit.train.train

        if (d / "config.json").is_file() or _records(d):  # a run's records: resumed only if they agree
            if _read_config(d)[1].identity() != cfg.identity():
                raise RunError(f"{d}: holds a different config than asked for (hash collision?)")
        else:
            atomic_write_text(d / "config.json", json.dumps({"name": name, "config": cfg.to_dict()}, indent=2))
        # A checkpoint that cannot be read is set aside, the previous good one takes its place;
        # metrics.csv is made to match the checkpoint resumed from.
        state = recover_checkpoint(d, train_kw["log"])
        if state is not None or (d / "metrics.csv").exists():
            _write_metrics(d / "metrics.csv", list(state["history"]) if state else [])
        del state
        if on_train:
            on_train()

        def stored(history: list[dict]) -> None:
            _write_metrics(d / "metrics.csv", history)
            if on_epoch:
                on_epoch(history)

        t0 = time.time()
        result = train(cfg, dataset, run_dir=d, on_epoch=stored, **train_kw)
        _write_metrics(d / "metrics.csv", result.history)
        summary = {"run": rid, "name": name, "config_hash": cfg.short_hash(), **result.summary, "wall_seconds": time.time() - t0,
                   "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "code_version": code_version()}
        summary = json.loads(json.dumps(summary), parse_constant=lambda c: None)  # NaN (no validation set) as null: strict JSON
        atomic_write_text(d / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
