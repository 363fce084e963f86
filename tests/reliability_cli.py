"""Helpers for the reliability tests that drive real `python -m labkit train` processes.

Not a test module (no test_ prefix): the crash and concurrency tests import it. Every run
here is a tiny net on synthetic data on the CPU, one thread, so that a run killed and
resumed in one process can be compared bit for bit with an uninterrupted run in another.
"""

from __future__ import annotations

import atexit
import csv
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from labkit.checkpoint import load_checkpoint
from labkit.config import parse_overrides, preset
from labkit.runs import RunStore
from labkit.synthetic import make_synthetic_cifar10

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4
PER_BATCH = 200  # 800 training images: about 0.6 s per epoch here
SETS = [
    "width=8",
    "lays=[1,1,1,1]",
    "seed_extra_block=False",
    "batch_size=32",
    "device=cpu",
    "channels_last=False",
]
# Columns of metrics.csv that are timings, not results.
TIMING = {"seconds", "images_per_s"}
# Taken out of the processes' environment: the tests name their folders themselves.
CLEARED_ENV = ("LABKIT_DATA", "LABKIT_RUNS")


def env() -> dict:
    e = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in CLEARED_ENV:
        e.pop(k, None)
    return e


def argv(runs: Path, data: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    out = [sys.executable, "-m", "labkit", "train", "--preset", "seed", "--epochs", str(epochs), "--synthetic"]
    out += ["--synthetic-size", str(PER_BATCH), "--runs-dir", str(runs), "--data-dir", str(data)]
    for s in SETS:
        out += ["--set", s]
    return out + list(extra)


def run_dir(runs: Path, epochs: int = EPOCHS) -> Path:
    cfg = preset("seed", **parse_overrides(SETS), epochs=epochs)
    store = RunStore(runs)
    return store.path(store.run_id(cfg, "seed"))


def make_data(root: Path) -> Path:
    make_synthetic_cifar10(root, per_batch=PER_BATCH)
    return root


def start(args: list[str], log: Path, cwd: Path, new_session: bool = False) -> subprocess.Popen:
    """new_session: its own process session, so one kill reaches it and all its children."""
    f = open(log, "w")  # noqa: SIM115 (closed by finish or kill)
    p = subprocess.Popen(
        args, cwd=cwd, env=env(), stdout=f, stderr=subprocess.STDOUT, text=True, start_new_session=new_session
    )
    p._log_file = f  # closed by finish()
    return p


def finish(p: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return p.wait(timeout=timeout)
    finally:
        p._log_file.close()


def run(args: list[str], cwd: Path, timeout: float = 120, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=timeout, check=False
    )


def metric_rows(d: Path) -> list[dict]:
    p = d / "metrics.csv"
    if not p.is_file():
        return []
    with open(p) as f:
        return list(csv.DictReader(f))


def wait_for(cond, timeout: float = 60, what: str = "", proc: subprocess.Popen | None = None) -> None:
    t = time.time() + timeout
    while time.time() < t:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def kill(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    p._log_file.close()
    assert p.returncode == -signal.SIGKILL


def epoch_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.lstrip().startswith("epoch")]


_REF: dict = {}


def start_reference() -> None:
    """Start the uninterrupted reference run in the background (once per session)."""
    if _REF:
        return
    tmp = Path(tempfile.mkdtemp(prefix="labkit-reference-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    make_data(tmp / "data")
    _REF["dir"] = tmp
    _REF["proc"] = start(argv(tmp / "runs", tmp / "data"), tmp / "reference.log", cwd=tmp)


@functools.cache
def reference() -> Path:
    """The run folder of one uninterrupted run (the same command, never killed)."""
    start_reference()
    tmp = _REF["dir"]
    rc = finish(_REF["proc"])
    log = (tmp / "reference.log").read_text()
    assert rc == 0, log
    assert len(epoch_lines(log)) == EPOCHS
    return run_dir(tmp / "runs")


def assert_same_run(got: Path, want: Path) -> None:
    """Same final weights, optimiser state, per-epoch metrics and summary numbers."""
    a, b = load_checkpoint(got / "checkpoint.pt"), load_checkpoint(want / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS - 1
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"weights differ in {k}"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), f"optimizer state {i}.{k} differs"
    ra, rb = metric_rows(got), metric_rows(want)
    assert len(ra) == len(rb) == EPOCHS
    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    assert strip(ra) == strip(rb)
    ja, jb = (json.loads((d / "summary.json").read_text()) for d in (got, want))
    for k in ("final_loss_sum", "final_val_acc", "best_val_acc", "test_acc", "test_loss", "selected_epoch", "config_hash"):
        assert ja[k] == jb[k], k
    assert not list(got.glob(".*.tmp")), "a temp file was left behind"
