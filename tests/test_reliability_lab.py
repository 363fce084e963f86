"""Crash and resume of the main job: `run_lab` (papermill, smoke profile) killed with SIGKILL
(the job and its kernel) after its first runs finished, then run again: it finishes, and
retrains none of the runs that were finished.

The kill and the rerun are conftest.py's session fixture smoke_lab (about two minutes on a
CPU, shared with test_report.py's end-to-end tests): this test only reads what it recorded.
Marked slow for that fixture."""

from __future__ import annotations

import pytest

from labkit.lab import plan
from labkit.runs import RunStore

pytestmark = pytest.mark.slow


def test_killed_lab_reruns_without_retraining_finished_runs(smoke_lab):
    lab = smoke_lab
    done, after = lab.at_kill, lab.after
    # The first attempt was killed after two runs, before the report.
    assert len(done) >= 2 and not lab.report_at_kill, f"at the kill: {sorted(done)}" + lab.tail()
    # The rerun (run_lab in the fixture) returned, with the report.
    assert (lab.root / "out" / "report.html").is_file()
    for rid, stamp in done.items():
        assert after.get(rid) == stamp, f"{rid} was trained again" + lab.tail()  # same mtime, same finished_at
    assert len(after) > len(done)  # and the rest was trained
    # The killed runs are runs of the rerun's own plan (same arguments), the ones it had to reuse.
    assert set(after) == {RunStore.run_id(cfg, name) for _, name, cfg in plan("smoke")}
    for d in lab.runs.iterdir():
        assert (d / "summary.json").is_file(), f"{d.name} left unfinished"
        assert not list(d.glob(".*.tmp"))
