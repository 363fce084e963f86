"""benchmarks/gpu_lab.sh, the one prepared command of a GPU lease, checked on the CPU: a
mistake in it would cost a lease its measurements (PROFILE=smoke: synthetic data, tiny nets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_lab.sh"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(tmp_path / "out"), "PROFILE": "smoke", "PY": sys.executable, "BUDGET_S": "300",
            "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=full, capture_output=True, text=True, timeout=600)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MODE": "fast"}, "MODE must be finish, speed, time, accuracy, modern or confirm, got fast"),
        ({"MODE": "confirm"}, "MODE=confirm needs WINNER"),
        ({"MODE": "time", "RETRAIN": "3887dc1"}, "RETRAIN goes with MODE=finish"),
        ({"MODE": "speed", "ONLY": "05_final"}, "ONLY goes with MODE=finish or time (it narrows their sweep), got MODE=speed"),
    ],
)
def test_bad_modes_stop_before_anything_runs(tmp_path, env, message):
    out = _run(tmp_path, **env)
    assert out.returncode == 2 and message in out.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # runs the script end to end
def test_confirm_trains_the_winner_per_seed_and_writes_its_estimates(tmp_path):
    runs = tmp_path / "runs"
    out = _run(tmp_path, MODE="confirm", WINNER="2:cutout=4,tta_translate=2", SEEDS="2", RUNS_DIR=str(runs))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    est = {row["label"]: row for row in json.loads((tmp_path / "out" / "confirm.json").read_text())}
    assert est["test_acc"]["n"] == 2 and 0 <= est["test_acc"]["lo"] <= est["test_acc"]["hi"] <= 1
    assert est["train_seconds"]["n"] == 2
    finished = sorted(p.name for p in runs.iterdir() if (p / "summary.json").is_file())
    assert len(finished) == 2 and all(n.startswith("modern-final-2-cutout-4-tta_translate-2-") for n in finished)
    cfgs = [json.loads((runs / n / "config.json").read_text())["config"] for n in finished]
    assert sorted(c["seed"] for c in cfgs) == [0, 1]
    assert all((c["cutout"], c["tta_translate"], c["val_size"], c["split"]) == (4, 2, 0, "full") for c in cfgs)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert str(tmp_path) not in log and str(ROOT) not in log  # what comes back is committed
    assert (tmp_path / "out" / "runs.tar.gz").is_file()


@pytest.mark.slow  # runs the script end to end
def test_confirm_fails_when_no_seed_finished(tmp_path):
    # one epoch is shorter than the modern preset's warm-up: every seed is refused
    out = _run(tmp_path, MODE="confirm", WINNER="1", SEEDS="1", RUNS_DIR=str(tmp_path / "runs"))
    assert out.returncode == 1
    assert "warmup_epochs must lie in [0, epochs=1]" in out.stdout and "nothing to confirm" in out.stdout


@pytest.mark.slow  # runs the script end to end
def test_time_times_the_seed_protocol_from_nothing(tmp_path):
    # the next lease's first call: benchmark, then the seed protocol's runs into a fresh store;
    # ONLY= narrows the sweep to notebook 05's one run (the whole protocol's 12 train elsewhere
    # in this suite; a lease leaves ONLY unset and times them all: the test below)
    out = _run(tmp_path, MODE="time", RUNS_DIR=str(tmp_path / "out" / "protocol-runs"), ONLY="05_final")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rec = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert rec["from_nothing"] is True and rec["protocol"] == "seed" and rec["seeds"] == 1
    assert rec["only"] == ["05_final"] and rec["whole_plan"] is False  # never read as the protocol's time
    assert rec["counts"] == {"done": 1, "cached": 0, "skipped": 0, "stopped": 0, "failed": 0}
    assert [(j["name"], j["status"]) for j in rec["jobs"]] == [("final", "done")] and rec["jobs"][0]["train_seconds"] > 0
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "protocol seed (only 05_final), 1 seed(s)" in log
    assert "bench chooses: one lane, no compile" in log  # the sweep's options, from the bench's record
    bench = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert "not a speed figure" in bench["note"]  # a CPU check, never presented as a GPU result
    assert str(tmp_path) not in (tmp_path / "out" / "sweep.json").read_text()
    compare = (tmp_path / "out" / "compare.txt").read_text()
    assert compare.startswith("no finished run of") or compare.split()[:3] == ["run", "code", "(new)"], compare
    assert (tmp_path / "out" / "runs.tar.gz").is_file() and "final-" in (tmp_path / "out" / "runs.txt").read_text()


def test_time_sweeps_the_whole_protocol_unless_told_only(tmp_path):
    """Without ONLY the sweep gets no --only: the command a lease runs times all the protocol.
    PY is a stand-in that records each call and succeeds (a CUDA check included): the
    script takes its GPU path and trains nothing."""
    calls = tmp_path / "calls.txt"
    py = tmp_path / "py"
    py.write_text(f'#!/bin/bash\necho "$*" >> {calls}\n')
    py.chmod(0o755)
    for only in (None, "03_depth_limit,05_final"):
        calls.unlink(missing_ok=True)
        out = _run(tmp_path, MODE="time", PY=str(py), RUNS_DIR=str(tmp_path / "runs"), **({"ONLY": only} if only else {}))
        assert out.returncode == 0, out.stdout[-3000:]
        (sweep,) = [c for c in calls.read_text().splitlines() if c.startswith("-m labkit sweep ")]
        assert "--protocol seed --seeds 1 " in sweep and sweep.endswith("--lanes 1"), sweep  # the stand-in chose nothing
        assert f"-m benchmarks.bench --sweep-options {tmp_path}/out/bench.json" in calls.read_text()
        assert ("--only" in sweep) == (only is not None) and (only is None or f"--only {only} " in sweep), sweep
