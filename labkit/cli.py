"""`python -m labkit ...`: train a run, list runs, make synthetic data, benchmark, run the lab."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, parse_overrides, preset

SYNTHETIC_DIR = Path("data") / "synthetic"


def _data_loader(args):
    from .data import load_cifar10

    def load(cfg):
        if args.synthetic:
            from .synthetic import make_synthetic_cifar10

            root = Path(args.data_dir) if args.data_dir else SYNTHETIC_DIR
            if not (root / "cifar-10-batches-py" / "test_batch").is_file():
                make_synthetic_cifar10(root, per_batch=args.synthetic_size)
            return load_cifar10(root, cfg.split, cfg.val_size, allow_download=False)
        return load_cifar10(args.data_dir, cfg.split, cfg.val_size)

    return load


def cmd_train(args) -> int:
    from .runs import RunStore

    overrides = parse_overrides(args.set or [])
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    cfg = preset(args.preset, **overrides)
    store = RunStore(args.runs_dir)
    name = args.name or args.preset
    print(f"run {store.run_id(cfg, name)} in {store.root}")
    load = _data_loader(args)
    run = store.get(
        cfg, name, lambda: load(cfg), retrain=args.retrain, checkpoint_every=args.checkpoint_every, progress=False
    )
    s = run.summary or {}
    print(
        f"done: {run.id}  final loss_sum {s.get('final_loss_sum'):.4f}  val_acc {s.get('final_val_acc')}  "
        f"test_acc {s.get('test_acc'):.4f} (epoch {s.get('selected_epoch')})  {s.get('train_seconds'):.1f}s training"
    )
    return 0


def cmd_runs(args) -> int:
    import pandas as pd

    from .runs import RunStore

    store = RunStore(args.runs_dir)
    t = store.table()
    if t.empty:
        print(f"no runs in {store.root}")
        return 0
    cols = [c for c in ["run", "finished", "epochs", "seed", "final_loss_sum", "final_val_acc", "test_acc", "train_seconds", "device"] if c in t]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(t[cols].to_string(index=False))
    return 0


def cmd_synth(args) -> int:
    from .synthetic import make_synthetic_cifar10

    folder = make_synthetic_cifar10(args.out, per_batch=args.per_batch, seed=args.seed)
    print(f"wrote synthetic CIFAR-10 ({5 * args.per_batch} train images) to {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labkit", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def data_args(p):
        p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default $LABKIT_DATA or ./data)")
        p.add_argument("--synthetic", action="store_true", help="train on generated CIFAR-format data")
        p.add_argument("--synthetic-size", type=int, default=500, help="images per synthetic batch file")
        p.add_argument("--runs-dir", help="run store (default $LABKIT_RUNS or ./runs)")

    p = sub.add_parser("train", help="train one run (or return it if it already finished)")
    p.add_argument("--preset", default="seed", help="seed | modern")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--name", help="run name (default: the preset's)")
    p.add_argument("--retrain", action="store_true", help="discard a finished run and train it again")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (0 = end only)")
    data_args(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("runs", help="print the table of runs")
    p.add_argument("--runs-dir")
    p.set_defaults(fn=cmd_runs)

    p = sub.add_parser("make-synthetic", help="write a synthetic CIFAR-10 in the official layout")
    p.add_argument("out")
    p.add_argument("--per-batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_synth)

    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .data import DataError
        from .runs import RunError
        from .train import CheckpointError, DivergenceError

        if isinstance(e, (DataError, RunError, CheckpointError, DivergenceError)):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
