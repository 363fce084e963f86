"""The run store: one folder per (name, config), trained once, found again afterwards.

    runs/<name>-<hash of the config>/
        config.json    the resolved config, written before training
        metrics.csv    one row per epoch, rewritten atomically after each epoch
        checkpoint.pt  the latest checkpoint (not in git)
        checkpoint.prev.pt  the one before it: the fallback when checkpoint.pt is corrupted
        summary.json   written last: its presence means the run finished

Asking for a finished run returns it without training; a run that stopped midway (even
killed with SIGKILL) resumes from its checkpoint; two processes asking for the same run
serialise on a lock. Every file is written to a temp file, fsynced and renamed into place,
so a half-written file is never read as good; a checkpoint that fails to load is moved
aside and the run falls back to the previous good one.

Under torchrun rank 0 asks the store and writes every file; the other ranks train beside it
(labkit.scale.distributed.get), so the folder must be on a filesystem every node sees.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import fcntl
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .checkpoint import atomic_write, load_checkpoint, recover_checkpoint
from .config import ConfigError, TrainConfig
from .data import DataError, Dataset, check_same_data, file_in_the_way, in_the_way, same_data

__all__ = [
    "Run", "RunStore", "RunError", "default_runs_dir", "atomic_write_text", "command_line", "code_version",
    "check_writable", "check_run_id",
]


class RunError(RuntimeError):
    """A run folder is incomplete, corrupted or belongs to another config."""


def default_runs_dir() -> Path:
    """`$LABKIT_RUNS`, else `./runs`."""
    return Path(os.environ.get("LABKIT_RUNS", "runs"))


def atomic_write_text(path: Path, text: str) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old file or the new one."""
    atomic_write(path, lambda f: f.write(text.encode()))


def check_writable(path: str | None, flag: str) -> None:
    """Fail before any work when a result file could not be written at the end.

    Makes no folder: a mistyped path (`/nonexist/x.json`) would otherwise leave folders
    wherever it points, at the filesystem's root too, and a refused command would leave
    them behind. The folder the file goes into must exist.
    """
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file name")
    blocker = file_in_the_way(p.parent)
    if blocker is not None:
        raise ConfigError(f"{flag} {path}: cannot write there: {in_the_way(blocker)}, not a folder")
    if not p.parent.is_dir():
        raise ConfigError(
            f"{flag} {path}: cannot write there: the folder {p.parent} does not exist; "
            f"make it first (mkdir -p {p.parent}) or give a file in a folder that exists"
        )
    try:
        probe = p.with_name(f".{p.name}.probe")
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None


def command_line(args: list[str] | None = None) -> str:
    """`python -m labkit ARGS` (default: this process's arguments): how a result was made,
    without the absolute path of labkit's __main__.py that sys.argv[0] holds."""
    import shlex
    import sys

    return "python -m labkit " + shlex.join(sys.argv[1:] if args is None else args)


def code_version() -> str:
    """The code a record was made with: $LABKIT_CODE_VERSION, else `git describe` of labkit's tree."""
    if os.environ.get("LABKIT_CODE_VERSION"):  # set where the tree travels without .git
        return os.environ["LABKIT_CODE_VERSION"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5
        )
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
        # The same run record, in the same state (a DataFrame field has no truth value, and
        # NaN in a summary is not equal to itself, so neither is compared directly).
        if not isinstance(other, Run):
            return NotImplemented
        return self._key() == other._key()

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


MAX_NAME = 200


# The one rule for run names and run ids (train --name, init_from, eval RUN): ASCII only, no
# separators, no '..' escapes, no hidden folder (a name always gets '-<hash>' appended).
NAME_RULE = "letters, digits, '.', '_' or '-', not starting with '.'"


def _safe_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and all((ch.isascii() and ch.isalnum()) or ch in "._-" for ch in name)


def check_run_id(run_id: object, what: str = "run") -> None:
    """Refuse what cannot be a run id (a folder name in a run store), naming the rule."""
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
    """metrics.csv, checked: a header with 'epoch', then rows of as many fields, epochs 1, 2, ..."""
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


# What every finished run's summary.json holds (older records have more keys, never fewer).
SUMMARY_KEYS = ("epochs", "final_loss_sum", "final_val_acc", "best_val_acc", "test_acc", "train_seconds")
# Numbers where a summary has them; null only where train() writes it (no validation set, no timing).
SUMMARY_NUMBERS = (*SUMMARY_KEYS, "selected_epoch", "test_loss", "train_images", "world_size", "wall_seconds", "images_per_s_mean")
NULLABLE = ("final_val_acc", "best_val_acc", "images_per_s_mean")
# A run's files; summary.json last, so that a retrain sets it aside only once the rest is.
RUN_FILES = ("checkpoint.pt", "checkpoint.prev.pt", "metrics.csv", "summary.json")
REPLACED = ".replaced"  # where a retrain keeps the finished run until the new one finishes


def _records(d: Path) -> list[str]:
    """The run files in folder `d`: a folder holding any is a run's, with or without its config.json."""
    return [f for f in RUN_FILES if (d / f).exists()]


def _read_config(d: Path) -> tuple[str, TrainConfig]:
    """A run's name and config from d/config.json, checked against the folder's name
    (`<name>-<hash of the config>`): a config edited by hand would pass for the one trained."""
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
    """summary.json, checked: a dict of SUMMARY_KEYS, numbers where numbers belong, as many
    epochs as its config and metrics.csv."""
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
    unfinished one in its checkpoint (read lazily, tensors left on disk); None where nothing says."""
    if run.finished:
        return (run.summary or {}).get(key)
    import torch

    try:
        return torch.load(run.dir / "checkpoint.pt", map_location="cpu", weights_only=True, mmap=True).get(key)
    except Exception:  # none yet, or damaged: its resume says which
        return None


def recorded_data(run: Run) -> dict | None:
    """What a run recorded of its data (see `recorded`)."""
    return recorded(run, "data")


class RunStore:
    """A folder of runs, one subfolder per run: `<name>-<hash of the config>` holding
    config.json, metrics.csv, checkpoint.pt and, once finished, summary.json.

    `get(cfg, name, data)` returns the finished run or trains it (resuming a stopped one);
    `find`/`load` read without training; `all()`, `table()` and `history()` list what is
    there. Default folder: $LABKIT_RUNS, else ./runs.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"{self.root} is a file, not a run store folder: give a folder (it is made when a run is trained)")
        if (self.root / "config.json").is_file():  # runs would be made inside this run's folder
            raise RunError(f"{self.root}: a run folder, not a run store; its store is {self.root.parent}")

    # -- naming -------------------------------------------------------------------------

    @staticmethod
    def run_id(cfg: TrainConfig, name: str) -> str:
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig (e.g. labkit.preset('seed')), got {type(cfg).__name__} {cfg!r:.80}")
        if not isinstance(name, str):
            raise TypeError(f"run name must be a string, got {type(name).__name__} {name!r:.80}")
        if not _safe_name(name):
            raise ConfigError(f"run name must be {NAME_RULE}, got {name!r}")
        if len(name) > MAX_NAME:  # the folder name (with '-<hash>' and temp-file prefixes) must fit 255 bytes
            raise ConfigError(f"run name must be at most {MAX_NAME} characters, got {len(name)}")
        return f"{name}-{cfg.short_hash()}"

    def path(self, run_id: str) -> Path:
        return self.root / run_id

    # -- reading ------------------------------------------------------------------------

    def load(self, run_id: str) -> Run:
        """A run from its records, checked against each other (config.json against the folder's
        name, summary.json against both and metrics.csv): one that does not agree raises
        RunError naming the file and the fix; a damaged run is never handed back."""
        d = self.path(run_id)
        if not d.exists():
            raise RunError(f"no run {run_id} in {self.root} (`python -m labkit runs --runs-dir {self.root}` lists them)")
        name, cfg = _read_config(d)
        hist = _read_metrics(d / "metrics.csv")
        summary = _read_summary(d / "summary.json", cfg, len(hist)) if (d / "summary.json").is_file() else None
        return Run(run_id, name, d, cfg, summary, hist)

    def find(self, cfg: TrainConfig, name: str) -> Run | None:
        d = self.path(self.run_id(cfg, name))
        return self.load(d.name) if (d / "config.json").is_file() or _records(d) else None

    def run_dirs(self) -> list[Path]:
        """The store's run folders: those with a config.json, and those without one that hold a
        run's files (damaged: `load` names them; never skipped in silence)."""
        if not self.root.is_dir():
            return []
        return [p for p in sorted(self.root.iterdir()) if (p / "config.json").is_file() or _records(p)]

    def on_other_data(self, source: dict) -> list[Run]:
        """The runs of this store trained on other files than `source` describes: finished
        ones by their summary, unfinished ones by their checkpoint (a run that cannot be read
        is left to whoever reads it)."""
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
        """Raise `error` when runs of this store (those with an id in `only`, if given) were
        trained, or begun, on other files than `source`, the data at `data_at`: a run trained
        beside them, or a report made of them, would pass another copy's runs for these
        data's (run ids name no data). `fix` ends the message."""
        other = [r for r in self.on_other_data(source) if only is None or r.id in only]
        if other:
            raise error(f"{len(other)} run(s) in {self.root} (finished, or begun) were trained on other data "
                        f"({self.data_of(other)}) than {data_at} ({source['description']}): {fix}")

    @staticmethod
    def data_of(runs: Iterable[Run]) -> str:
        """The data the runs recorded, in words (for a message about them)."""
        return "; ".join(sorted({str((recorded_data(r) or {}).get("description")) for r in runs}))

    def all(self) -> list[Run]:
        return [self.load(p.name) for p in self.run_dirs()]

    def set_aside_code(self, versions: Iterable[str], dest: str | os.PathLike) -> list[str]:
        """Move the finished runs trained by code `versions` (a commit, which also matches that
        commit with an uncommitted change, "abc1234+name") out of the store into `dest`, so that
        a sweep trains them again with the code of now; their ids stay, so the new runs take
        their place. A run being trained (its lock held) stops the move before anything moved,
        and so does a folder of the same name in `dest`: nothing is overwritten or lost."""
        versions = [v for v in versions if v]
        if not versions:
            raise RunError("set aside: name at least one code version (e.g. 3887dc1)")
        dest = Path(dest)
        if dest.resolve() == self.root.resolve() or dest.resolve().is_relative_to(self.root.resolve()):
            raise RunError(f"set aside: {dest} lies in the run store {self.root}; give a folder outside it")
        picked = []
        for r in self.all():
            v = str((r.summary or {}).get("code_version", ""))
            if r.finished and (v in versions or v.split("+")[0] in versions):
                picked.append(r)
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
        """One row per run: id, name, every config field, and the summary's numbers."""
        rows = []
        for r in self.all() if runs is None else runs:
            row = {"run": r.id, "name": r.name, "finished": r.finished}
            row.update({k: (str(v) if isinstance(v, list) else v) for k, v in r.config.to_dict().items()})
            for k, v in (r.summary or {}).items():
                if not isinstance(v, (dict, list)):
                    row[k] = v
            if r.summary and isinstance(r.summary.get("data"), dict):
                row["data"] = r.summary["data"].get("description")
            rows.append(row)
        return pd.DataFrame(rows)

    def history(self, runs: Iterable[Run] | None = None) -> pd.DataFrame:
        """All epochs of all runs, tidy: one row per (run, epoch)."""
        frames = []
        for r in self.all() if runs is None else runs:
            if len(r.history):
                h = r.history.copy()
                h.insert(0, "run", r.id)
                h.insert(1, "name", r.name)
                h.insert(2, "seed", r.config.seed)
                frames.append(h)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # -- training -------------------------------------------------------------------------

    def _parent_weights(self, cfg: TrainConfig) -> dict:
        """The final weights of the finished run cfg.init_from, checked to fit cfg's network."""
        from .train import check_init_state

        parent_id = cfg.init_from
        check_run_id(parent_id, "init_from")
        d = self.path(parent_id)
        if not (d / "summary.json").is_file():
            # A parent still training (or stopped midway) has a checkpoint too, but not its
            # final weights: starting from it would silently start from the wrong place.
            where = "is not finished in" if (d / "config.json").is_file() else "is not in"
            raise RunError(f"init_from: run {parent_id} {where} {self.root}; train it first")
        weights = load_checkpoint(d / "checkpoint.pt")["model"]
        check_init_state(cfg, weights, f"init_from: run {parent_id}", self.load(parent_id).config)
        return weights

    @contextlib.contextmanager
    def _lock(self, d: Path, wait: bool, log):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot make the run folder {d} ({e.strerror}): give a run store you can write to") from None
        f = open(d / ".lock", "w")
        try:
            waited = False
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise RunError(f"{d}: another process is training this run; try again when it ends") from None
                if log:
                    log(f"waiting: another process is training {d.name}")
                fcntl.flock(f, fcntl.LOCK_EX)
                waited = True
            yield waited
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def get(
        self,
        cfg: TrainConfig,
        name: str,
        data: Dataset | Callable[[], Dataset],
        *,
        retrain: bool = False,
        wait: bool = True,
        checkpoint_every: int = 1,
        progress: bool = True,
        log: Callable[[str], None] | None = print,
        on_epoch: Callable[[list[dict]], None] | None = None,
        on_train: Callable[[], None] | None = None,
        hooks=None,
    ) -> Run:
        """The finished run of `cfg` under `name`: loaded if done, else trained (or resumed).

        `data` may be a callable, so that finished runs never load the data. `on_epoch` sees
        the metric rows after each epoch is stored; raising there stops the run resumably.
        `on_train` is called once the run's folder is ready, before it trains; `hooks` go to
        the loop (labkit.train.Hooks: labkit.scale's lanes and ranks).
        """
        from .train import Hooks, check_fits

        rid = self.run_id(cfg, name)
        d = self.path(rid)
        if not retrain and (d / "summary.json").is_file():
            return self._finished(rid, data)
        # Checked before the run's folder exists, so a missing parent or unreadable data
        # leaves nothing behind (and a run to retrain untouched).
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
            # Temp files of a process killed mid-write: never read, removed (we hold the lock).
            for tmp in d.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            if retrain:
                # Set aside, not deleted: the finished run comes back if the new one fails.
                (d / REPLACED).mkdir(exist_ok=True)
                for f in RUN_FILES:
                    if (d / f).exists():
                        os.replace(d / f, d / REPLACED / f)
            try:
                self._train_here(d, rid, cfg, name, dataset, train_kw, on_epoch, on_train)
            except BaseException:
                if retrain:
                    _restore_replaced(d, log)
                raise
            if retrain:
                shutil.rmtree(d / REPLACED, ignore_errors=True)
        return self.load(rid)

    def _finished(self, rid: str, data: Dataset | Callable[[], Dataset]) -> Run:
        """A finished run, refused if the data at hand are not those it was trained on (the
        run id names no data). A loader not yet called is not called: recorded runs can be
        read without their data."""
        from .train import check_fits

        run = self.load(rid)
        if isinstance(data, Dataset):
            check_fits(run.config, data)  # the split it names
            check_same_data(
                (run.summary or {}).get("data"), data.source, f"run {rid} in {self.root}",
                "give the data it was trained on, retrain it (--retrain, or retrain=True), or use another run store",
            )
        return run

    def _train_here(self, d, rid, cfg, name, dataset, train_kw: dict, on_epoch, on_train) -> None:
        """RunStore.get's training, in the run's locked folder."""
        from .train import train  # at call time, not import time: tests replace labkit.train.train

        if (d / "config.json").is_file() or _records(d):  # a run's records: resumed only if they agree
            if _read_config(d)[1].identity() != cfg.identity():
                raise RunError(f"{d}: holds a different config than asked for (hash collision?)")
        else:
            atomic_write_text(d / "config.json", json.dumps({"name": name, "config": cfg.to_dict()}, indent=2))
        # A checkpoint that cannot be read is set aside, never trusted: the previous good
        # one takes its place. metrics.csv is made to match the checkpoint resumed from.
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
        summary = {
            "run": rid,
            "name": name,
            "config_hash": cfg.short_hash(),
            **result.summary,
            "wall_seconds": time.time() - t0,
            "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "code_version": code_version(),
        }
        # NaN (no validation set) as null: strict JSON, readable by any tool (older runs hold NaN)
        summary = json.loads(json.dumps(summary), parse_constant=lambda c: None)
        atomic_write_text(d / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
