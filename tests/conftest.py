"""Shared fixtures: small synthetic CIFAR-10 folders made once per session, modest threads,
and the smoke lab killed once and finished (the slow end-to-end tests share it).

Nothing here reads ../shared or the network: every dataset is written by
labkit.synthetic.make_synthetic_cifar10 into pytest's temporary folders.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from labkit.config import TrainConfig
from labkit.data import load_cifar10
from labkit.synthetic import make_synthetic_cifar10

# Images per synthetic batch file: 4 train batches = 800 images on the seed split.
PER_BATCH = 200

if TYPE_CHECKING:
    from labkit.job import LabReport


@pytest.fixture(autouse=True, scope="session")
def _modest_threads():
    # One thread: the nets here are tiny, and on a small shared CI machine a second OpenMP
    # thread waiting on a busy core makes a width-8 forward pass ~100x slower, not faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A folder holding cifar-10-batches-py with PER_BATCH images per file (bytes keys)."""
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_cifar10(root, per_batch=PER_BATCH)
    return root


@pytest.fixture(scope="session")
def synth_data(synth_root):
    """The seed split of the session's synthetic data: 800 train / 200 val / 200 test."""
    return load_cifar10(synth_root, split="seed", allow_download=False)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """100 per batch and a 50-image test set, so val (100) and test (50) differ in size."""
    root = tmp_path_factory.mktemp("tiny")
    make_synthetic_cifar10(root, per_batch=100, test_size=50, seed=1)
    return load_cifar10(root, split="seed", allow_download=False)


def _tiny_config(**changes) -> TrainConfig:
    base = {
        "width": 8,
        "lays": (1, 1, 1, 1),
        "lr": 3e-3,
        "batch_size": 32,
        "epochs": 2,
        "device": "cpu",
        "channels_last": False,
    }
    return TrainConfig(**{**base, **changes})


@pytest.fixture
def tiny_config():
    """cfg(**changes): a corrected, narrow (width 8), shallow (lays 1) net; about a second
    per epoch on a CPU."""
    return _tiny_config


# ---------------------------------------------------------------------------------------
# The smoke lab, killed once and finished: shared by test_report.py and test_reliability_lab.py
# ---------------------------------------------------------------------------------------

# The call both processes make, the killed one (here as a script) and the rerun in this
# process (smoke_lab below): the same arguments plan the same runs, so the runs finished
# before the kill are the ones the rerun must reuse. Defaults otherwise (2 seeds, a PDF
# when Chromium is on PATH), as CI runs the lab.
SMOKE_JOB = """
import sys
from pathlib import Path
from labkit.job import run_lab

root = Path(sys.argv[1])
run_lab("smoke", root=root, out=root / "out")
"""

Stamps = dict[str, tuple[int, str]]


def finished_runs(runs: Path) -> Stamps:
    """run id -> (mtime_ns, finished_at) of each finished run's summary.json: a run trained
    again gets a new file (a new mtime) and a new finished_at."""
    out = {}
    for p in runs.glob("*/summary.json"):
        try:
            out[p.parent.name] = (p.stat().st_mtime_ns, json.loads(p.read_text())["finished_at"])
        except (OSError, ValueError):  # not there yet: summary.json is written atomically, so never half
            pass
    return out


def recorded_run(store: Path, source: dict, name: str = "x", cfg: TrainConfig | None = None) -> Path:
    """A finished run's folder with only its records (default config, every number 1, a
    metrics row per epoch), trained on the data `source` describes: for checks that read what
    a store's runs were trained on. Its records agree with each other, as RunStore.load checks."""
    from labkit.runs import SUMMARY_KEYS

    cfg = cfg or TrainConfig()
    d = store / f"{name}-{cfg.short_hash()}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"name": name, "config": cfg.to_dict()}))
    (d / "metrics.csv").write_text("epoch\n" + "".join(f"{e}\n" for e in range(1, cfg.epochs + 1)))
    (d / "summary.json").write_text(json.dumps({**dict.fromkeys(SUMMARY_KEYS, 1), "epochs": cfg.epochs, "data": source}))
    return d


def log_tail(path: Path, n: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.is_file() else "(no log)"
    return f"\n--- last {n} characters of {path} ---\n{text[-n:]}"


@dataclass
class SmokeLab:
    report: LabReport  # what the rerun returned
    root: Path  # the temporary project root: build/smoke/runs, out/, first.log
    seconds: float  # the rerun's wall time (this process)
    at_kill: Stamps  # the runs finished when the first process was killed
    report_at_kill: bool  # whether out/report.html existed then (it must not have)
    after: Stamps  # the runs finished once the rerun returned, read before any test ran
    first_log: Path  # what the killed process printed

    @property
    def runs(self) -> Path:
        return self.root / "build" / "smoke" / "runs"

    def tail(self) -> str:
        return log_tail(self.first_log)


@pytest.fixture(scope="session")
def smoke_lab(tmp_path_factory) -> SmokeLab:
    """The smoke profile end to end, killed once: the report tests' lab and the crash test's.

    One fixture plays both roles because each role is a whole smoke lab (about two minutes on
    a CPU) and one run serves both: the lab is started in a subprocess of its own session and
    SIGKILLed with its process group (the job and its kernel) once two runs have finished;
    then the same call, run_lab("smoke", root=root, out=root / "out"), finishes it in this
    process. The report tests (test_report.py) check what that rerun returned and wrote,
    which is the whole report: every notebook runs in the rerun, whether its runs were
    trained there or reused. The crash test (test_reliability_lab.py) checks that the rerun
    returned, and that the runs finished before the kill were reused, not trained again
    (`at_kill` against `after`: the rerun writes a finished run's summary.json only by
    training it again). Everything is under a temporary project root (never report/).

    The killed process gets reliability_cli.env(): this repository on PYTHONPATH, one thread,
    no LABKIT_DATA or LABKIT_RUNS. The rerun runs with this session's environment but
    without those two either, so a developer's shell cannot make the two differ.
    """
    import reliability_cli as cli

    from labkit.job import run_lab

    root = tmp_path_factory.mktemp("lab")
    runs = root / "build" / "smoke" / "runs"
    first_log = root / "first.log"
    with open(first_log, "w") as log1:
        first = subprocess.Popen(
            [sys.executable, "-c", SMOKE_JOB, str(root)],
            cwd=cli.REPO,
            env=cli.env(),
            stdout=log1,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kernel dies with it
        )
        failed = None
        try:
            cli.wait_for(lambda: len(finished_runs(runs)) >= 2, timeout=240, what="two finished runs", proc=first)
            time.sleep(1.0)  # into the next run
        except AssertionError as e:
            failed = str(e)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=60)
    if failed:
        pytest.fail(failed + log_tail(first_log))
    at_kill = finished_runs(runs)
    report_at_kill = (root / "out" / "report.html").exists()
    # The kernel runs in a session of its own and exits by itself within about a second of
    # its parent's death (ipykernel's parent poller); until then the rerun waits on the run lock.

    with pytest.MonkeyPatch.context() as mp:
        for k in cli.CLEARED_ENV:
            mp.delenv(k, raising=False)
        t0 = time.time()
        rep = run_lab("smoke", root=root, out=root / "out")  # SMOKE_JOB's call
        seconds = time.time() - t0
    return SmokeLab(rep, root, seconds, at_kill, report_at_kill, finished_runs(runs), first_log)
