"""`python -m labkit ...`: train a run, evaluate it again, list runs, make synthetic data, benchmark, sweep, run the lab."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, parse_overrides, preset

SYNTHETIC_DIR = Path("data") / "synthetic"


def _synthetic_data(root: Path, per_batch: int, split: str, val_size: int):
    """Synthetic data at `root`, made there unless present; never another size, never real data."""
    from .data import FOLDER, DataError, load_cifar10, read_batch
    from .synthetic import make_synthetic_cifar10

    folder = root / FOLDER
    if not (folder / "test_batch").is_file():
        make_synthetic_cifar10(root, per_batch=per_batch)
    else:  # made earlier: it must be what was asked for, or the run's id would lie about its data
        have = len(read_batch(folder / "data_batch_1")[1])
        if have != per_batch:
            raise DataError(
                f"{folder} holds {have} images per batch, not the {per_batch} of --synthetic-size; "
                "pick another --data-dir or delete that folder"
            )
    data = load_cifar10(root, split, val_size, allow_download=False)
    if data.source["official"]:
        raise DataError(f"--synthetic, but {folder} holds the official CIFAR-10; pick another --data-dir")
    return data


def _data_loader(args, allow_download: bool = True):
    from .data import load_cifar10

    def load(cfg):
        if args.synthetic:
            n = args.synthetic_size
            root = Path(args.data_dir) if args.data_dir else SYNTHETIC_DIR / f"per-batch-{n}"
            return _synthetic_data(root, n, cfg.split, cfg.val_size)
        return load_cifar10(args.data_dir, cfg.split, cfg.val_size, allow_download=allow_download)

    return load


def _check_synthetic_size(args) -> None:
    if args.synthetic and args.synthetic_size < 10:
        raise ConfigError(f"--synthetic-size must be >= 10 (images per batch file, one per class), got {args.synthetic_size}")


def _one_value(field: str, flag_value, flag: str, set_value):
    """A field given by a dedicated flag and by --set: the one value, refused if they differ."""
    if flag_value is not None and set_value is not None and flag_value != set_value:
        raise ConfigError(f"{field} given twice, {flag} {flag_value} and --set {field}={set_value}: give it once")
    return flag_value if flag_value is not None else set_value


def cmd_train(args) -> int:
    from .data import DataNotFound
    from .progress import kept_if_interrupted
    from .runs import RunStore
    from .step import resolve_device

    overrides = parse_overrides(args.set or [])
    epochs = _one_value("epochs", args.epochs, "--epochs", overrides.get("epochs"))
    if epochs is not None:
        overrides["epochs"] = epochs
    cfg = preset(args.preset, **overrides)
    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0 (0 = only at the end), got {args.checkpoint_every}")
    _check_synthetic_size(args)
    resolve_device(cfg.device)  # before anything is written: a GPU asked for must be there
    store = RunStore(args.runs_dir)
    name = args.name or args.preset
    # Under torchrun with several processes: join them (one run, DDP); otherwise nothing.
    from .scale import distributed

    group = distributed.init(cfg.device)
    try:
        main = group is None or group.rank == 0
        if main:
            where = f" on {group.world} processes" if group is not None else ""
            print(f"run {store.run_id(cfg, name)} in {store.root}{where}")
        # Not read with --retrain: a run whose summary is corrupted is trained again, not refused.
        found = None if args.retrain else store.find(cfg, name)
        handed_back = found is not None and found.finished
        if not handed_back:
            # What main() says if Ctrl-C stops it: where a rerun of the same command goes on from.
            kept = kept_if_interrupted(store.path(store.run_id(cfg, name)) / "checkpoint.pt", args.checkpoint_every)
            kept = kept.removeprefix("interrupted, ")  # the line already starts "interrupted (SIGINT)"
            args.interrupted = f"run {store.run_id(cfg, name)} in {store.root} stopped before it finished; {kept} (the same command)"
        # The data are loaded before the store is asked, without downloading, so that `get`
        # compares them with any finished run it hands back (a run's id names no data), also
        # one another process finishes meanwhile. Only data not here at all wait for `get`'s
        # loader, which downloads them if it has to train; data that are here but cannot be
        # read (or a file where the folder should be) are an error, as they are for eval.
        try:
            data = _data_loader(args, allow_download=False)(cfg)
            if main:
                from .data import default_data_dir, unlabelled_note

                # labkit's synthetic data say what they are
                if not data.source.get("synthetic") and (note := unlabelled_note(data.source, args.data_dir or default_data_dir())):
                    print(note)
        except DataNotFound as e:
            load = _data_loader(args)  # what it downloads is the official CIFAR-10: no note
            data = lambda: load(cfg)  # noqa: E731
            if main and handed_back:
                print(f"note: the data were not found here, so the finished run was not compared with them ({e})")
        kw = {"retrain": args.retrain, "wait": not args.no_wait, "checkpoint_every": args.checkpoint_every, "progress": False}
        if group is None:
            run = store.get(cfg, name, data, log=print, **kw)
        else:
            run = distributed.get(store, group, cfg, name, data, log=print if main else None, **kw)
    finally:
        distributed.shutdown()
    if not main:
        return 0
    if handed_back:  # (a run another process finished meanwhile: `get` said so)
        print(f"{run.id}: finished already; its result is used, nothing trained here (--retrain trains it again)")
    s = run.summary or {}
    v = s.get("final_val_acc")
    val = "no validation set" if v is None or v != v else f"val_acc {v:.4f}"  # null, or NaN in older runs
    print(
        f"done: {run.id}  final loss_sum {s.get('final_loss_sum'):.4f}  {val}  "
        f"test_acc {s.get('test_acc'):.4f} (epoch {s.get('selected_epoch')})  {s.get('train_seconds'):.1f}s training"
    )
    return 0


def _synthetic_made(source: dict) -> tuple[int, int, int] | None:
    """(seed, images per training batch, test images) of a run's synthetic data, from its
    recorded `source`; None for other data."""
    made = source.get("made") if source.get("synthetic") else None
    return (made["seed"], made["per_batch"], made["test_size"]) if isinstance(made, dict) else None


def _synthetic_flags(source: dict) -> str:
    """How to give a run's synthetic data (its recorded `source`) to eval again."""
    made = _synthetic_made(source)
    if not made:
        return "--synthetic and the --synthetic-size it was trained with"
    seed, per, test = made
    if (seed, test) == (0, per):  # what --synthetic makes
        return f"--synthetic --synthetic-size {per}"
    again = f" (make-synthetic DIR --per-batch {per} --seed {seed} makes them again)" if test == per else ""
    return f"--data-dir at the folder of those data, without --synthetic{again}"


def _check_eval_data_flags(args, run_id: str, trained_on: dict) -> None:
    """Refuse, from what the run recorded of its data, flags that would give it other data,
    before those are generated (or downloaded) only to be refused as other data."""
    from .data import DataError

    desc = trained_on.get("description")
    if args.synthetic and trained_on.get("official"):
        raise DataError(f"{run_id} was trained on {desc}, not labkit's synthetic data: leave out --synthetic "
                        "and point --data-dir at the data it was trained on")
    made = _synthetic_made(trained_on)
    if not (args.synthetic and made):
        return
    seed, per, test = made
    root = Path(args.data_dir) if args.data_dir else SYNTHETIC_DIR / f"per-batch-{args.synthetic_size}"
    made_here = (root / "cifar-10-batches-py" / "test_batch").is_file()
    if per != args.synthetic_size or ((seed, test) != (0, per) and not made_here):
        raise DataError(f"{run_id} was trained on {desc}; --synthetic --synthetic-size {args.synthetic_size} "
                        f"would give other data: evaluate it with {_synthetic_flags(trained_on)}")


def cmd_eval(args) -> int:
    import json
    import math

    from .data import DataError, DataNotFound, check_same_data, default_data_dir
    from .evaluate import EVAL_EXECUTION_FIELDS, EVAL_FIELDS, reevaluate
    from .runs import RunError, RunStore, atomic_write_text, check_run_id, check_writable
    from .step import resolve_device

    check_writable(args.out, "--out")
    _check_synthetic_size(args)
    changes = parse_overrides(args.set or [])
    # The device is where both rows are evaluated, not a setting compared: --device, or --set device=.
    device = _one_value("device", args.device, "--device", changes.pop("device", None)) or "auto"
    resolve_device(device)
    if not changes:
        keys = [k for k in EVAL_FIELDS + EVAL_EXECUTION_FIELDS if k != "device"]
        raise ConfigError(f"give the settings to evaluate with: --set KEY=VALUE, KEY one of {keys} (the device: --device)")
    check_run_id(args.run)  # the rule train's --name follows
    store = RunStore(args.runs_dir)
    run = store.load(args.run)
    if not run.finished:
        raise RunError(f"{run.dir}: the run has not finished; nothing to evaluate yet")
    cfg = run.config
    trained_on = run.summary.get("data") or {}
    _check_eval_data_flags(args, run.id, trained_on)  # before any data are made or downloaded
    try:
        # labkit's synthetic data are never downloaded: a run trained on them is not looked for in CIFAR-10
        data = _data_loader(args, allow_download=not trained_on.get("synthetic"))(cfg)
    except DataError as e:
        if args.synthetic or not trained_on.get("synthetic"):
            raise
        # eval is told --synthetic again; runs on labkit's synthetic data record it
        how = f"{run.id} was trained on {trained_on['description']}: evaluate it with {_synthetic_flags(trained_on)}"
        if isinstance(e, DataNotFound):
            raise DataError(f"no CIFAR-10 batches at {args.data_dir or default_data_dir()}; {how}") from None
        raise DataError(f"{e} ({how})") from None
    check_same_data(run.summary.get("data"), data.source, run.id, "point --data-dir at the data it was trained on")
    s = run.summary
    own = reevaluate(cfg, run.checkpoint, data, device=device)
    other = reevaluate(cfg, run.checkpoint, data, device=device, **changes)
    # Each row says the precision it was computed in: a change of precision is one of the settings compared.
    rows = [("as trained (its summary)", {k: getattr(cfg, k) for k in EVAL_FIELDS}, f"{s.get('precision', 'unrecorded')} on {s.get('device', '?')}",
             s.get("final_val_acc"), s.get("test_acc")),
            ("as trained, evaluated now", own["settings"], own["precision"], own["val_acc"], own["test_acc"]),
            ("with " + " ".join(f"{k}={v}" for k, v in changes.items()), other["settings"], other["precision"], other["val_acc"], other["test_acc"])]
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
    print(f"run {run.id}, evaluated now on {own['device']}")
    # Test numbers beside each setting invite choosing the setting by them; they are shown
    # only when asked for (--test), e.g. for the setting already chosen on validation.
    print(f"{'':34s} {'settings':36s} {'precision':16s} {'val_acc':>8s}" + (f" {'test_acc':>8s}" if args.test else ""))
    for label, st, prec, va, te in rows:
        print(f"{label:34s} {' '.join(f'{k}={v}' for k, v in st.items()):36s} {prec:16s} {fmt(va):>8s}"
              + (f" {fmt(te):>8s}" if args.test else ""))
    if math.isnan(own["val_acc"]):
        print("note: this run has no validation set, so nothing here can choose between settings; its test numbers "
              "(--test) cannot either without selecting on the test set (train with split 'seed', or 'full' with val_size > 0)")
    elif args.test:
        print("note: choose between settings by val_acc; choosing by test_acc selects on the test set")
    else:
        print("note: choose between settings by val_acc; test numbers are left out (--test shows them)")
    if args.out:
        if not args.test:
            own, other = ({k: v for k, v in r.items() if not k.startswith("test_")} for r in (own, other))
        rec = {"run": run.id, "command": args.command, "as_trained": own, "with": other, "changes": changes}
        rec = json.loads(json.dumps(rec), parse_constant=lambda c: None)  # NaN -> null: strict JSON
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), json.dumps(rec, indent=2))
    return 0


def cmd_sweep(args) -> int:
    from .scale.sweep import main_sweep

    return main_sweep(args)


def cmd_lab(args) -> int:
    import logging

    from .job import run_lab

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run_lab(
        args.profile,
        data_dir=args.data_dir,
        allow_train=not args.no_train,
        seeds=args.seeds,
        out=args.out,
        runs_dir=args.runs_dir,
        allow_cpu=args.allow_cpu,
        pdf=not args.no_pdf,
        lanes=args.lanes,
        dry_run=args.dry_run,
    )
    return 0


def cmd_export(args) -> int:
    from .export import export_notebook

    for path in export_notebook(args.notebook, args.out, pdf=args.pdf):
        print(f"wrote {path}")
    return 0


def cmd_runs(args) -> int:
    import pandas as pd

    from .runs import RunError, RunStore, recorded

    store = RunStore(args.runs_dir)
    root = store.root
    if not root.exists():
        raise RunError(f"{root}: no such folder (a run store is the folder that holds the run folders)")
    if not root.is_dir():
        raise RunError(f"{root}: a file, not a run store")
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
        print(f"no runs in {root}")
    else:
        t = store.table(runs)
        # an unfinished run: the epochs it has done of those planned
        t["epochs"] = [r.config.epochs if r.finished else f"{len(r.history)}/{r.config.epochs}" for r in runs]
        # where it ran, for an unfinished run as its checkpoint says (not its config's "auto"); "—": not recorded
        t["device"] = [recorded(r, "device") or "—" for r in runs]
        cols = [c for c in ["run", "finished", "epochs", "seed", "final_loss_sum", "final_val_acc", "test_acc", "train_seconds", "device"] if c in t]
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(t[cols].to_string(index=False))
    for b in bad:
        print(f"error: {b}", file=sys.stderr)
    return 1 if bad else 0


def cmd_synth(args) -> int:
    from .synthetic import make_synthetic_cifar10

    folder = make_synthetic_cifar10(args.out, per_batch=args.per_batch, seed=args.seed, overwrite=args.force)
    print(f"wrote synthetic CIFAR-10 ({5 * args.per_batch} train images) to {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    ap = argparse.ArgumentParser(prog="labkit", description=__doc__)
    ap.add_argument("--version", action="version", version=f"labkit {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def data_args(p):
        p.add_argument(
            "--data-dir",
            help="folder holding cifar-10-batches-py (default $LABKIT_DATA or ./data; "
            "with --synthetic, ./data/synthetic/per-batch-N)",
        )
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
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="tta_flip, tta_translate, precision or channels_last (repeatable)")
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

    p = sub.add_parser("bench", help="time the seed's recipe beside labkit's path (GPU; --cpu-check for a small CPU check)")
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
    p.set_defaults(fn=lambda a: __import__("labkit.scale.bench", fromlist=["main_bench"]).main_bench(a))

    p = sub.add_parser("sweep", help="train a profile's planned runs in priority order, side by side, in a time budget")
    p.add_argument("--profile", default="full", help="full | quick | smoke")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default $LABKIT_DATA or data/ in the project root; "
                   "the smoke profile makes its own); a relative path is taken from here")
    p.add_argument("--runs-dir", help="run store (default: the profile's, in the project root: the nearest folder from here "
                   "up that holds notebooks/, else here); a relative path is taken from here")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: the profile's)")
    p.add_argument("--only", help="comma-separated notebooks to include, e.g. 04_ablations,05_final")
    p.add_argument("--protocol", default="lab", choices=["lab", "seed"],
                   help="lab: every planned run; seed: the seed report's protocol only (ablations, final, depths; no modern)")
    p.add_argument("--lanes", default="1", help="runs side by side on each GPU, or 'auto' (from --bench-json); without a GPU, one")
    p.add_argument("--bench-json", help="a `labkit bench` result: gives --rate-guess, --lanes auto and --compile auto")
    p.add_argument("--deadline", type=float, help="unix time by which every run must end")
    p.add_argument("--budget-s", type=float, help="seconds from now by which every run must end")
    p.add_argument("--rate-guess", type=float, help="GFLOP/s of one lane, until a run has measured it")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (0 = end only)")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes sharing the jobs, each on one GPU (round-robin) with --lanes lanes; 0 = this process")
    p.add_argument("--compile", default="",
                   help="torch.compile mode for every run (an execution setting: same run ids), or 'auto' (from --bench-json)")
    p.add_argument("--timing-json", help="write the sweep's wall time and every run's time here (JSON)")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("lab", help="run the lab's notebooks with papermill and export the report (HTML + PDF)")
    p.add_argument("--profile", default="auto", choices=["auto", "full", "quick", "smoke"],
                   help="auto: full with a CUDA GPU and CIFAR-10, else smoke (default)")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default $LABKIT_DATA or ./data)")
    p.add_argument("--no-train", action="store_true", help="render from finished runs in the store only; train nothing")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: the profile's)")
    p.add_argument("--out", help="report folder (default: the profile's, report/ or build/<profile>/report)")
    p.add_argument("--runs-dir", help="run store (default: the profile's)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="let the full or quick profile train on a CPU however long its estimate (full: days)")
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

    args = ap.parse_args(argv)
    from .runs import command_line

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
    except Exception as e:
        from .checkpoint import CheckpointError
        from .data import DataError
        from .lab import LabError
        from .runs import RunError
        from .train import DivergenceError

        if isinstance(e, (DataError, RunError, CheckpointError, DivergenceError, LabError)):
            print(f"error: {e}", file=sys.stderr)
            return 1
        import torch

        if isinstance(e, torch.cuda.OutOfMemoryError):  # the message names the batch size
            print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
        if isinstance(e, OSError):  # a path that is a file, not writable, too long...: it names the path
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
