"""Two processes asking for the same run at once: one trains, the other waits for it (or,
with --no-wait, fails at once with a clear message); a waiter whose trainer is killed takes
over from its checkpoint. Neither corrupts the run folder: the result equals a lone run."""

from __future__ import annotations

import fcntl

import pytest
import reliability_cli as R

# Real processes killed and raced: end to end, run by `make test-slow` (CI runs both).
pytestmark = pytest.mark.slow



@pytest.fixture
def lab(tmp_path):
    R.start_reference()  # the uninterrupted run, in the background meanwhile
    R.make_data(tmp_path / "data")
    return tmp_path


def _hold_lock(d):
    """Take the run's lock as a training process would (this test process is the holder)."""
    d.mkdir(parents=True, exist_ok=True)
    f = open(d / ".lock", "w")  # noqa: SIM115 (closed by _release)
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def _release(f) -> None:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


def _log(lab, name: str) -> str:
    return (lab / f"{name}.log").read_text()


def test_two_processes_at_once_one_trains_the_other_waits(lab):
    args = R.argv(lab / "runs", lab / "data")
    procs = {name: R.start(args, lab / f"{name}.log", cwd=lab) for name in ("a", "b")}
    codes = {name: R.finish(p) for name, p in procs.items()}
    logs = {name: _log(lab, name) for name in procs}
    assert codes == {"a": 0, "b": 0}, logs
    trained = sorted(len(R.epoch_lines(t)) for t in logs.values())
    assert trained == [0, R.EPOCHS], logs  # exactly one trained; the other got its finished run
    assert all("done: seed-" in t for t in logs.values())
    R.assert_same_run(R.run_dir(lab / "runs"), R.reference())


def test_no_wait_fails_clearly_while_a_waiter_waits(lab):
    d = R.run_dir(lab / "runs")
    held = _hold_lock(d)
    try:
        waiter = R.start(R.argv(lab / "runs", lab / "data"), lab / "waiter.log", cwd=lab)
        out = R.run(R.argv(lab / "runs", lab / "data", "--no-wait"), cwd=lab)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "another process is training this run" in out.stderr and d.name in out.stderr
        R.wait_for(lambda: "waiting: another process is training" in _log(lab, "waiter"), what="the waiter to wait", proc=waiter)
        assert waiter.poll() is None
        assert {p.name for p in d.iterdir()} == {".lock"}  # neither touched the run while locked out
    finally:
        _release(held)
    assert R.finish(waiter) == 0, _log(lab, "waiter")
    assert len(R.epoch_lines(_log(lab, "waiter"))) == R.EPOCHS
    R.assert_same_run(d, R.reference())


def test_waiter_takes_over_when_the_trainer_is_killed(lab):
    d = R.run_dir(lab / "runs")
    args = R.argv(lab / "runs", lab / "data")
    held = _hold_lock(d)  # both start behind it, so both are surely waiting when it opens
    try:
        procs = {name: R.start(args, lab / f"{name}.log", cwd=lab) for name in ("a", "b")}
        for name, p in procs.items():
            R.wait_for(lambda n=name: "waiting:" in _log(lab, n), what=f"{name} to wait", proc=p)
    finally:
        _release(held)
    R.wait_for(lambda: any(R.epoch_lines(_log(lab, n)) for n in procs), what="the first epoch of whichever trains")
    trainer = next(n for n in procs if R.epoch_lines(_log(lab, n)))
    waiter = "b" if trainer == "a" else "a"
    R.kill(procs[trainer])  # mid-run: the kernel releases its lock; the waiter takes over
    assert R.finish(procs[waiter]) == 0, _log(lab, waiter)
    w = _log(lab, waiter)
    assert "resumed from" in w and 0 < len(R.epoch_lines(w)) < R.EPOCHS, w
    R.assert_same_run(d, R.reference())
