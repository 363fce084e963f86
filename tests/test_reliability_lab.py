"""Crash and resume of the main job: `run_lab` (papermill, smoke profile) killed with SIGKILL
(the job and its kernel) after its first runs finished, then run again: it finishes, and
retrains none of the runs that were finished. About two minutes on a CPU: marked slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import reliability_cli as R

pytestmark = pytest.mark.slow

JOB = """
import sys
from pathlib import Path
from labkit.report import run_lab

root = Path(sys.argv[1])
run_lab("smoke", root=root, out=root / "out", seeds=1, pdf=False)
"""


def _finished(runs: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for p in runs.glob("*/summary.json"):
        try:
            out[p.parent.name] = (p.stat().st_mtime_ns, json.loads(p.read_text())["finished_at"])
        except (OSError, ValueError):  # not there yet: summary.json is written atomically, so never half
            pass
    return out


def test_killed_lab_reruns_without_retraining_finished_runs(tmp_path):
    runs = tmp_path / "build" / "smoke" / "runs"
    log1 = open(tmp_path / "first.log", "w")  # noqa: SIM115
    first = subprocess.Popen(
        [sys.executable, "-c", JOB, str(tmp_path)],
        cwd=R.REPO,
        env=R.env(),
        stdout=log1,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kernel dies with it
    )
    try:
        R.wait_for(lambda: len(_finished(runs)) >= 2, timeout=240, what="two finished runs", proc=first)
        time.sleep(1.0)  # into the next run
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
        log1.close()
    done = _finished(runs)
    assert len(done) >= 2 and not (tmp_path / "out" / "report.html").exists()
    # The kernel runs in a session of its own and exits by itself within about a second of
    # its parent's death (ipykernel's parent poller); until then the rerun waits on the run lock.

    again = subprocess.run(
        [sys.executable, "-c", JOB, str(tmp_path)], cwd=R.REPO, env=R.env(), capture_output=True, text=True, timeout=600,
        check=False,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (tmp_path / "out" / "report.html").is_file()
    after = _finished(runs)
    for rid, stamp in done.items():
        assert after[rid] == stamp, f"{rid} was trained again"  # same mtime, same finished_at
    assert len(after) > len(done)  # and the rest was trained
    for d in runs.iterdir():
        assert (d / "summary.json").is_file(), f"{d.name} left unfinished"
        assert not list(d.glob(".*.tmp"))
