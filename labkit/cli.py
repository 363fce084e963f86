"""`labkit ...`: train a run, evaluate it again, list runs, make synthetic data, sweep, run the
lab, export a notebook. `labkit COMMAND --help` says what each takes."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import pandas as pd
import torch

from . import __version__, export, job, synthetic
from .checkpoint import CheckpointError
from .config import ConfigError, parse_overrides, preset
from .data import (
    FOLDER,
    DataError,
    DataNotFound,
    check_same_data,
    default_data_dir,
    load_cifar10,
    read_batch,
    unlabelled_note,
)
from .evaluate import EVAL_EXECUTION_FIELDS, EVAL_FIELDS, reevaluate
from .lab import LabError
from .progress import kept_if_interrupted
from .runs import RunError, RunStore, atomic_write_text, check_run_id, check_writable, command_line, recorded
from .step import resolve_device
from .train import DivergenceError

SYNTHETIC_DIR = Path("data") / "synthetic"


def _synthetic_data(root: Path, per_batch: int, split: str, val_size: int):
    """Synthetic data at `root`, made there unless present; never another size, never real data."""
    folder = root / FOLDER
    if not (folder / "test_batch").is_file():
        synthetic.make_synthetic_cifar10(root, per_batch=per_batch)
    elif (have := len(read_batch(folder / "data_batch_1")[1])) != per_batch:  # else the run's id would lie about its data
        raise DataError(f"{folder} holds {have} images per batch, not the {per_batch} of --synthetic-size; "
                        "pick another --data-dir or delete that folder")
    data = load_cifar10(root, split, val_size, allow_download=False)
    if data.source["official"]:
        raise DataError(f"--synthetic, but {folder} holds the official CIFAR-10; pick another --data-dir")
    return data


def _data_loader(args, allow_download: bool = True):
    def load(cfg):
        if args.synthetic:
            root = Path(args.data_dir) if args.data_dir else SYNTHETIC_DIR / f"per-batch-{args.synthetic_size}"
            return _synthetic_data(root, args.synthetic_size, cfg.split, cfg.val_size)
        return load_cifar10(args.data_dir, cfg.split, cfg.val_size, allow_download=allow_download)

    return load


def _one_value(field: str, flag_value, flag: str, set_value):
    """A field given by a dedicated flag and by --set: the one value, refused if they differ."""
    if flag_value is not None and set_value is not None and flag_value != set_value:
        raise ConfigError(f"{field} given twice, {flag} {flag_value} and --set {field}={set_value}: give it once")
    return flag_value if flag_value is not None else set_value


def _checked(args) -> None:
    if getattr(args, "synthetic", False) and args.synthetic_size < 10:
        raise ConfigError(f"--synthetic-size must be >= 10 (images per batch file, one per class), got {args.synthetic_size}")
    if getattr(args, "checkpoint_every", 0) < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0 (0 = only at the end), got {args.checkpoint_every}")


def _train_data(args, cfg, main: bool, handed_back: bool):
    """The data, loaded before the store is asked and without downloading, so that `get`
    compares them with any finished run it hands back (run ids name no data). Only data not
    here at all wait for `get`'s loader, which downloads them if it has to train."""
    try:
        data = _data_loader(args, allow_download=False)(cfg)
        note = not data.source.get("synthetic") and unlabelled_note(data.source, args.data_dir or default_data_dir())
        if main and note:
            print(note)
        return data
    except DataNotFound as e:
        if main and handed_back:
            print(f"note: the data were not found here, so the finished run was not compared with them ({e})")
        load = _data_loader(args)  # what it downloads is the official CIFAR-10: no note
        return lambda: load(cfg)


def cmd_train(args) -> int:
    from .scale import distributed

    overrides = parse_overrides(args.set or [])
    if (epochs := _one_value("epochs", args.epochs, "--epochs", overrides.get("epochs"))) is not None:
        overrides["epochs"] = epochs
    cfg = preset(args.preset, **overrides)
    _checked(args)
    resolve_device(cfg.device)  # before anything is written: a GPU asked for must be there
    store, name = RunStore(args.runs_dir), args.name or args.preset
    rid = store.run_id(cfg, name)
    group = distributed.init(cfg.device)  # under torchrun with several processes: one run over them (DDP)
    try:
        main = group is None or group.rank == 0
        if main:
            print(f"run {rid} in {store.root}" + (f" on {group.world} processes" if group is not None else ""))
        found = None if args.retrain else store.find(cfg, name)  # a corrupted summary is trained again with --retrain
        handed_back = found is not None and found.finished
        if not handed_back:  # what Ctrl-C says: where the same command goes on from
            kept = kept_if_interrupted(store.path(rid) / "checkpoint.pt", args.checkpoint_every).removeprefix("interrupted, ")
            args.interrupted = f"run {rid} in {store.root} stopped before it finished; {kept} (the same command)"
        data = _train_data(args, cfg, main, handed_back)
        kw = {"retrain": args.retrain, "wait": not args.no_wait, "checkpoint_every": args.checkpoint_every, "progress": False}
        if group is None:
            run = store.get(cfg, name, data, log=print, **kw)
        else:
            run = distributed.get(store, group, cfg, name, data, log=print if main else None, **kw)
    finally:
        distributed.shutdown()
    if not main:
        return 0
    if handed_back:
        print(f"{run.id}: finished already; its result is used, nothing trained here (--retrain trains it again)")
    s = run.summary
    v = s.get("final_val_acc")
    val = "no validation set" if v is None or v != v else f"val_acc {v:.4f}"  # null, or NaN in older runs
    print(f"done: {run.id}  final loss_sum {s.get('final_loss_sum'):.4f}  {val}  "
          f"test_acc {s.get('test_acc'):.4f} (epoch {s.get('selected_epoch')})  {s.get('train_seconds'):.1f}s training")
    return 0


def _synthetic_flags(made: tuple[int, int, int] | None) -> str:
    """How to give a run's synthetic data (seed, per batch, test images) to eval again."""
    if not made:
        return "--synthetic and the --synthetic-size it was trained with"
    seed, per, test = made
    if (seed, test) == (0, per):  # what --synthetic makes
        return f"--synthetic --synthetic-size {per}"
    again = f" (make-synthetic DIR --per-batch {per} --seed {seed} makes them again)" if test == per else ""
    return f"--data-dir at the folder of those data, without --synthetic{again}"


def _eval_data(args, run):
    """The run's data for eval; flags that would give it other data are refused, from what
    the run recorded, before anything is made or downloaded."""
    trained_on = run.summary.get("data") or {}
    m = trained_on.get("made") if trained_on.get("synthetic") else None
    made = (m["seed"], m["per_batch"], m["test_size"]) if isinstance(m, dict) else None
    desc = trained_on.get("description")
    if args.synthetic and trained_on.get("official"):
        raise DataError(f"{run.id} was trained on {desc}, not labkit's synthetic data: leave out --synthetic "
                        "and point --data-dir at the data it was trained on")
    if args.synthetic and made:
        seed, per, test = made
        root = Path(args.data_dir) if args.data_dir else SYNTHETIC_DIR / f"per-batch-{args.synthetic_size}"
        if per != args.synthetic_size or ((seed, test) != (0, per) and not (root / FOLDER / "test_batch").is_file()):
            raise DataError(f"{run.id} was trained on {desc}; --synthetic --synthetic-size {args.synthetic_size} "
                            f"would give other data: evaluate it with {_synthetic_flags(made)}")
    try:  # labkit's synthetic data are never downloaded
        data = _data_loader(args, allow_download=not trained_on.get("synthetic"))(run.config)
    except DataError as e:
        if args.synthetic or not trained_on.get("synthetic"):
            raise
        how = f"{run.id} was trained on {desc}: evaluate it with {_synthetic_flags(made)}"
        if isinstance(e, DataNotFound):
            raise DataError(f"no CIFAR-10 batches at {args.data_dir or default_data_dir()}; {how}") from None
        raise DataError(f"{e} ({how})") from None
    check_same_data(run.summary.get("data"), data.source, run.id, "point --data-dir at the data it was trained on")
    return data


def _print_eval(run, changes: dict, own: dict, other: dict, show_test: bool) -> None:
    """Each setting's row, with the precision it was computed in (a change of precision is one
    of the settings compared); test numbers only when asked for: they invite choosing by them."""
    s, cfg = run.summary, run.config
    rows = [("as trained (its summary)", {k: getattr(cfg, k) for k in EVAL_FIELDS},
             f"{s.get('precision', 'unrecorded')} on {s.get('device', '?')}", s.get("final_val_acc"), s.get("test_acc")),
            ("as trained, evaluated now", own["settings"], own["precision"], own["val_acc"], own["test_acc"]),
            ("with " + " ".join(f"{k}={v}" for k, v in changes.items()), other["settings"], other["precision"],
             other["val_acc"], other["test_acc"])]
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
    print(f"run {run.id}, evaluated now on {own['device']}")
    print(f"{'':34s} {'settings':36s} {'precision':16s} {'val_acc':>8s}" + (f" {'test_acc':>8s}" if show_test else ""))
    for label, st, prec, va, te in rows:
        print(f"{label:34s} {' '.join(f'{k}={v}' for k, v in st.items()):36s} {prec:16s} {fmt(va):>8s}"
              + (f" {fmt(te):>8s}" if show_test else ""))
    if math.isnan(own["val_acc"]):
        print("note: this run has no validation set, so nothing here can choose between settings; its test numbers "
              "(--test) cannot either without selecting on the test set (train with split 'seed', or 'full' with val_size > 0)")
    elif show_test:
        print("note: choose between settings by val_acc; choosing by test_acc selects on the test set")
    else:
        print("note: choose between settings by val_acc; test numbers are left out (--test shows them)")


def cmd_eval(args) -> int:
    check_writable(args.out, "--out")
    _checked(args)
    changes = parse_overrides(args.set or [])
    # The device is where both rows are evaluated, not a setting compared: --device, or --set device=.
    device = _one_value("device", args.device, "--device", changes.pop("device", None)) or "auto"
    resolve_device(device)
    if not changes:
        keys = [k for k in EVAL_FIELDS + EVAL_EXECUTION_FIELDS if k != "device"]
        raise ConfigError(f"give the settings to evaluate with: --set KEY=VALUE, KEY one of {keys} (the device: --device)")
    check_run_id(args.run)
    run = RunStore(args.runs_dir).load(args.run)
    if not run.finished:
        raise RunError(f"{run.dir}: the run has not finished; nothing to evaluate yet")
    data = _eval_data(args, run)
    own = reevaluate(run.config, run.checkpoint, data, device=device)
    other = reevaluate(run.config, run.checkpoint, data, device=device, **changes)
    _print_eval(run, changes, own, other, args.test)
    if args.out:
        if not args.test:
            own, other = ({k: v for k, v in r.items() if not k.startswith("test_")} for r in (own, other))
        rec = {"run": run.id, "command": args.command, "as_trained": own, "with": other, "changes": changes}
        rec = json.loads(json.dumps(rec), parse_constant=lambda c: None)  # NaN -> null: strict JSON
        atomic_write_text(Path(args.out), json.dumps(rec, indent=2))
    return 0


def cmd_runs(args) -> int:
    store = RunStore(args.runs_dir)
    if not store.root.exists():
        raise RunError(f"{store.root}: no such folder (a run store is the folder that holds the run folders)")
    if args.set_aside:
        if not args.to:
            raise RunError("--set-aside needs --to DIR, the folder the runs move to (outside the store)")
        moved = store.set_aside_code(args.set_aside, args.to)
        print(f"moved {len(moved)} finished run(s) of code {' '.join(args.set_aside)} to {args.to}: "
              + ("a sweep of their profile trains them again" if moved else "none matched"))
        for rid in moved:
            print(f"  {rid}")
        return 0
    if args.to:
        raise RunError("--to goes with --set-aside")
    runs, bad = [], []
    for p in store.run_dirs():
        try:
            runs.append(store.load(p.name))
        except RunError as e:  # list the others, name this one
            bad.append(f"damaged run {p.name}: {e}")
    if not runs:
        print(f"no runs in {store.root}")
    else:
        t = store.table(runs)
        t["epochs"] = [r.config.epochs if r.finished else f"{len(r.history)}/{r.config.epochs}" for r in runs]
        t["device"] = [recorded(r, "device") or "—" for r in runs]  # an unfinished run's from its checkpoint
        cols = [c for c in ["run", "finished", "epochs", "seed", "final_loss_sum", "final_val_acc", "test_acc", "train_seconds",
                            "device"] if c in t]
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(t[cols].to_string(index=False))
    for b in bad:
        print(f"error: {b}", file=sys.stderr)
    return 1 if bad else 0


def cmd_synth(args) -> int:
    folder = synthetic.make_synthetic_cifar10(args.out, per_batch=args.per_batch, seed=args.seed, overwrite=args.force)
    print(f"wrote synthetic CIFAR-10 ({5 * args.per_batch} train images) to {folder}")
    return 0


def cmd_lab(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    job.run_lab(args.profile, data_dir=args.data_dir, allow_train=not args.no_train, seeds=args.seeds, out=args.out,
                runs_dir=args.runs_dir, allow_cpu=args.allow_cpu, pdf=not args.no_pdf, lanes=args.lanes, dry_run=args.dry_run)
    return 0


def cmd_export(args) -> int:
    for path in export.export_notebook(args.notebook, args.out, pdf=args.pdf):
        print(f"wrote {path}")
    return 0


def _run_parsers(sub) -> None:
    def data_args(p):
        p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default $LABKIT_DATA or ./data; "
                       "with --synthetic, ./data/synthetic/per-batch-N)")
        p.add_argument("--synthetic", action="store_true", help="use generated CIFAR-format data (made on first use)")
        p.add_argument("--synthetic-size", type=int, default=500, help="images per synthetic batch file (default 500)")
        p.add_argument("--runs-dir", help="run store (default $LABKIT_RUNS or ./runs)")

    p = sub.add_parser("train", help="train one run (or return it if it already finished)")
    p.add_argument("--preset", default="seed", help="seed | modern (default seed)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--epochs", type=int, help="epochs to train (default: the preset's; the same as --set epochs=N)")
    p.add_argument("--name", help="run name (default: the preset's)")
    p.add_argument("--retrain", action="store_true", help="discard a finished run and train it again")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (0 = end only; default 1)")
    p.add_argument("--no-wait", action="store_true", help="fail at once if another process is training this run")
    data_args(p)
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("eval", help="evaluate a finished run's weights again with other test-time settings (TTA)")
    p.add_argument("run", help="run id, e.g. modern-777d574203")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="tta_flip, tta_translate, precision or channels_last (repeatable)")
    p.add_argument("--device", help="auto | cpu | cuda, where both rows are evaluated (default auto; or --set device=)")
    p.add_argument("--out", help="also write the numbers here (JSON)")
    p.add_argument("--test", action="store_true",
                   help="also show test accuracy per setting (left out by default: choosing a setting by it selects on the test set)")
    data_args(p)
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("runs", help="print the table of runs; or set aside the runs of a code version, to train them again")
    p.add_argument("--runs-dir", help="run store (default $LABKIT_RUNS or ./runs)")
    p.add_argument("--set-aside", nargs="+", metavar="CODE",
                   help="move the finished runs trained by these code versions (a commit also matches commit+change) out of the store")
    p.add_argument("--to", metavar="DIR", help="where --set-aside moves them (outside the store; never overwritten)")
    p.set_defaults(fn=cmd_runs)
    p = sub.add_parser("make-synthetic", help="write a synthetic CIFAR-10 in the official layout")
    p.add_argument("out", help="folder to write cifar-10-batches-py into (made if missing)")
    p.add_argument("--per-batch", type=int, default=500, help="images per batch file (>= 10; default 500)")
    p.add_argument("--seed", type=int, default=0, help="numpy seed (>= 0; default 0, what --synthetic makes)")
    p.add_argument("--force", action="store_true", help="overwrite CIFAR-10 files already there (never the official ones)")
    p.set_defaults(fn=cmd_synth)


def _lab_parsers(sub) -> None:
    p = sub.add_parser("lab", help="run the lab's notebooks with papermill and export the report (HTML + PDF)")
    p.add_argument("--profile", default="auto", choices=["auto", "full", "quick", "smoke"],
                   help="auto: full with a CUDA GPU and CIFAR-10, else smoke (default)")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default $LABKIT_DATA or ./data)")
    p.add_argument("--no-train", action="store_true", help="render from finished runs in the store only; train nothing")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: the profile's)")
    p.add_argument("--out", help="report folder (default: the profile's, report/ or build/<profile>/report)")
    p.add_argument("--runs-dir", help="run store (default: the profile's)")
    p.add_argument("--allow-cpu", action="store_true", help="let the full or quick profile train on a CPU however long its estimate (full: days)")
    p.add_argument("--no-pdf", action="store_true", help="export the HTML only")
    p.add_argument("--lanes", type=int, help="on a GPU: runs trained side by side before the notebooks render (default 2)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (data, run store, report folder, runs finished and to train, time estimate); do nothing")
    p.set_defaults(fn=cmd_lab)
    p = sub.add_parser("export", help="one executed notebook as HTML (and PDF), as the report looks: code hidden, no stderr")
    p.add_argument("notebook", help="an executed .ipynb (e.g. report/05_final.ipynb)")
    p.add_argument("--pdf", action="store_true", help="also print a PDF with a headless Chromium on PATH")
    p.add_argument("--out", help="folder for the HTML and PDF (default: beside the notebook)")
    p.set_defaults(fn=cmd_export)


def main(argv: list[str] | None = None) -> int:
    from .scale import sweep

    ap = argparse.ArgumentParser(prog="labkit", description=__doc__)
    ap.add_argument("--version", action="version", version=f"labkit {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _run_parsers(sub)
    sweep.add_parser(sub)
    _lab_parsers(sub)
    args = ap.parse_args(argv)
    args.command = command_line(argv)  # recorded with results
    try:
        return args.fn(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; 130 as a shell reports SIGINT
        note = getattr(args, "interrupted", None)
        print(f"interrupted (SIGINT): {note}" if note else "interrupted (SIGINT)", file=sys.stderr)
        return 130
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, RunError, CheckpointError, DivergenceError, LabError, OSError) as e:  # OSError names its path
        print(f"error: {e}", file=sys.stderr)
        return 1
    except torch.cuda.OutOfMemoryError as e:  # the message names the batch size
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
