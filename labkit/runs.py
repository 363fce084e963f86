"""The run store: runs/<name>-<hash of the config>/ holds config.json, metrics.csv (a row per
epoch), checkpoint.pt (and the one before, checkpoint.prev.pt) and, once finished, summary.json.
A finished run is handed back without training, a stopped one resumes from its checkpoint, two
processes asking for the same run serialise on a lock, and every record is checked against the
others when read: a damaged run is named, never handed back."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from . import train as training  # training.train at call time: tests replace it
from .checkpoint import load_checkpoint, recover_checkpoint
from .config import ConfigError, TrainConfig
from .data import DataError, Dataset, check_same_data, file_in_the_way, in_the_way, same_data
from .records import (  # noqa: F401  (re-exported)
    MAX_NAME,
    NAME_RULE,
    REPLACED,
    RUN_FILES,
    SUMMARY_KEYS,
    Run,
    RunError,
    atomic_write_text,
    check_run_id,
    code_version,
    read_config,
    read_metrics,
    read_summary,
    record_files,
    recorded,
    restore_replaced,
    safe_name,
    write_metrics,
)
from .train import Hooks, check_fits, check_init_state

__all__ = ["Run", "RunStore", "RunError", "atomic_write_text", "command_line", "code_version", "check_writable", "check_run_id"]


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
        if not safe_name(name):
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
        name, cfg = read_config(d)
        hist = read_metrics(d / "metrics.csv")
        summary = read_summary(d / "summary.json", cfg, len(hist)) if (d / "summary.json").is_file() else None
        return Run(run_id, name, d, cfg, summary, hist)

    def find(self, cfg: TrainConfig, name: str) -> Run | None:
        d = self.path(self.run_id(cfg, name))
        return self.load(d.name) if (d / "config.json").is_file() or record_files(d) else None

    def run_dirs(self) -> list[Path]:
        """The run folders, damaged ones too (those that hold a run's files without config.json)."""
        if not self.root.is_dir():
            return []
        return [p for p in sorted(self.root.iterdir()) if (p / "config.json").is_file() or record_files(p)]

    def all(self) -> list[Run]:
        return [self.load(p.name) for p in self.run_dirs()]

    def on_other_data(self, source: dict) -> list[Run]:
        """The runs trained (or begun) on other files than `source`; unreadable ones are left out."""
        out = []
        for p in self.run_dirs():
            with contextlib.suppress(RunError):
                if not same_data(recorded(r := self.load(p.name)), source):
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
        return "; ".join(sorted({str((recorded(r) or {}).get("description")) for r in runs}))

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
            restore_replaced(d, log)  # a retrain killed before it could put the old run back
            if not retrain and (d / "summary.json").is_file():  # finished while we waited
                if waited and log:
                    log(f"{rid}: the other process finished it; its result is used, nothing trained here")
                return self._finished(rid, dataset)
            for tmp in d.glob(".*.tmp"):  # temp files of a process killed mid-write: never read
                tmp.unlink(missing_ok=True)
            if retrain:  # set aside, not deleted: the finished run comes back if the new one fails
                (d / REPLACED).mkdir(exist_ok=True)
                for f in record_files(d):
                    os.replace(d / f, d / REPLACED / f)
            try:
                self._train_here(d, rid, cfg, name, dataset, train_kw, on_epoch, on_train)
            except BaseException:
                if retrain:
                    restore_replaced(d, log)
                raise
            shutil.rmtree(d / REPLACED, ignore_errors=True)
        return self.load(rid)

    def _finished(self, rid: str, data: Dataset | Callable[[], Dataset]) -> Run:
        """A finished run, refused for other data than it was trained on; a loader is not called."""
        run = self.load(rid)
        if isinstance(data, Dataset):
            check_fits(run.config, data)
            check_same_data(run.summary.get("data"), data.source, f"run {rid} in {self.root}",
                            "give the data it was trained on, retrain it (--retrain, or retrain=True), or use another run store")
        return run

    def _train_here(self, d, rid, cfg, name, dataset, train_kw: dict, on_epoch, on_train) -> None:
        """get's training, in the run's locked folder: records, resume point, loop, summary."""
        if (d / "config.json").is_file() or record_files(d):  # a run's records: resumed only if they agree
            if read_config(d)[1].identity() != cfg.identity():
                raise RunError(f"{d}: holds a different config than asked for (hash collision?)")
        else:
            atomic_write_text(d / "config.json", json.dumps({"name": name, "config": cfg.to_dict()}, indent=2))
        # A checkpoint that cannot be read is set aside, the previous good one takes its place;
        # metrics.csv is made to match the checkpoint resumed from.
        state = recover_checkpoint(d, train_kw["log"])
        if state is not None or (d / "metrics.csv").exists():
            write_metrics(d / "metrics.csv", list(state["history"]) if state else [])
        del state
        if on_train:
            on_train()

        def stored(history: list[dict]) -> None:
            write_metrics(d / "metrics.csv", history)
            if on_epoch:
                on_epoch(history)

        t0 = time.time()
        result = training.train(cfg, dataset, run_dir=d, on_epoch=stored, **train_kw)
        write_metrics(d / "metrics.csv", result.history)
        summary = {"run": rid, "name": name, "config_hash": cfg.short_hash(), **result.summary, "wall_seconds": time.time() - t0,
                   "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "code_version": code_version()}
        summary = json.loads(json.dumps(summary), parse_constant=lambda c: None)  # NaN (no validation set) as null: strict JSON
        atomic_write_text(d / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
