"""Crash and resume: a `python -m labkit train` process killed with SIGKILL (from outside
mid-epoch, or at the worst moments of its own writes), then run again with the same command,
resumes from its last good checkpoint and ends bit for bit where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
import reliability_cli as R

from labkit.checkpoint import CheckpointError, load_checkpoint

# Real processes killed: end to end, run by `make test-slow` (CI runs both).
pytestmark = pytest.mark.slow

# Run inside the child: SIGKILL itself at a chosen write (torch.save of the Nth checkpoint,
# after writing half its bytes; or the Nth rename onto a given file name), then labkit's CLI.
KILLER = r"""
import io, os, signal, sys
import torch

kind, *rest = os.environ["KILL_AT"].split(":")
seen = {}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if kind == "save":
    real_save, nth = torch.save, int(rest[0])

    def save(obj, f, *a, **kw):
        seen["save"] = seen.get("save", 0) + 1
        if seen["save"] == nth:
            buf = io.BytesIO()
            real_save(obj, buf, *a, **kw)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            die()
        return real_save(obj, f, *a, **kw)

    torch.save = save
else:
    real_replace, name, nth = os.replace, rest[0], int(rest[1])

    def replace(src, dst, *a, **kw):
        if os.path.basename(dst) == name:
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == nth:
                die()
        return real_replace(src, dst, *a, **kw)

    os.replace = replace

from labkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def lab(tmp_path):
    R.start_reference()  # the uninterrupted run, in the background meanwhile
    R.make_data(tmp_path / "data")
    return tmp_path


def _rerun_and_compare(lab, resumed_at: int) -> None:
    """Run the same command again: it resumes after epoch `resumed_at` and matches the reference."""
    out = R.run(R.argv(lab / "runs", lab / "data"), cwd=lab)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"at epoch {resumed_at}/{R.EPOCHS}" in out.stdout and "resumed from" in out.stdout, out.stdout
    assert len(R.epoch_lines(out.stdout)) == R.EPOCHS - resumed_at  # nothing finished is trained again
    R.assert_same_run(R.run_dir(lab / "runs"), R.reference())


def test_sigkill_mid_epoch_then_same_command_resumes_exactly(lab):
    d = R.run_dir(lab / "runs")
    p = R.start(R.argv(lab / "runs", lab / "data"), lab / "first.log", cwd=lab)
    R.wait_for(lambda: len(R.metric_rows(d)) >= 1, what="the first epoch's metrics", proc=p)
    time.sleep(0.25)  # an epoch takes about 0.6 s here: the kill lands inside the next one
    R.kill(p)
    done = len(R.metric_rows(d))
    assert 1 <= done < R.EPOCHS and not (d / "summary.json").exists()
    ckpt_epochs = int(load_checkpoint(d / "checkpoint.pt")["epoch"]) + 1
    assert ckpt_epochs in (done, done + 1)  # the checkpoint is written just before the metrics
    _rerun_and_compare(lab, ckpt_epochs)


def test_sigkill_inside_each_write_never_leaves_a_bad_file(lab):
    """Four processes in a row on one run: the first three SIGKILL themselves at the worst
    moment of a write, each rerun resumes; the fourth finishes, equal to the reference."""
    d = R.run_dir(lab / "runs")
    stages = [
        # (kill at, epochs done by the last good checkpoint afterwards, metrics rows afterwards)
        ("save:2", 1, 1),  # half of the 2nd checkpoint written to its temp file: checkpoint.pt is the 1st
        ("replace:metrics.csv:3", 3, 2),  # resumed at 1; epoch 3's metrics written to a temp file, not renamed
        ("replace:summary.json:1", 4, 4),  # resumed at 3; every epoch done, summary.json not yet in place
    ]
    resumed_at = 0
    for kill_at, ckpt_epochs, rows in stages:
        args = [sys.executable, "-c", KILLER, *R.argv(lab / "runs", lab / "data")[3:]]  # without "-m labkit"
        out = R.run(args, cwd=lab, extra_env={"KILL_AT": kill_at})
        assert out.returncode == -9, out.stdout + out.stderr
        if resumed_at:
            assert f"at epoch {resumed_at}/{R.EPOCHS}" in out.stdout, out.stdout
        # A reader now sees the state before the interrupted write, never half a file.
        assert int(load_checkpoint(d / "checkpoint.pt")["epoch"]) + 1 == ckpt_epochs, kill_at
        assert len(R.metric_rows(d)) == rows, kill_at
        assert not (d / "summary.json").exists()
        json.loads((d / "config.json").read_text())  # still whole
        leftovers = list(d.glob(".*.tmp"))
        assert len(leftovers) == 1, f"{kill_at}: the killed write leaves exactly its own temp file"
        if kill_at.startswith("save"):
            with pytest.raises(CheckpointError, match=leftovers[0].name):
                load_checkpoint(leftovers[0])  # the half-written file is refused, by name
        resumed_at = ckpt_epochs
    _rerun_and_compare(lab, resumed_at)


# `python -m labkit` as a shell runs it, SIGINT raising KeyboardInterrupt (a child started
# from a shell without job control would inherit SIGINT ignored).
CTRL_C = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from labkit.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_ctrl_c_says_in_one_line_what_a_rerun_resumes_from(lab):
    import os
    import signal

    d = R.run_dir(lab / "runs")
    log = lab / "first.log"
    p = R.start([sys.executable, "-c", CTRL_C, *R.argv(lab / "runs", lab / "data")[3:]], log, cwd=lab)
    R.wait_for(lambda: R.epoch_lines(log.read_text()), what="the first epoch's line", proc=p)
    os.kill(p.pid, signal.SIGINT)
    assert R.finish(p) == 130
    out = log.read_text()
    assert "Traceback" not in out, out
    (said,) = [ln for ln in out.splitlines() if not ln.startswith(("run ", "epoch"))]
    assert said == (
        f"interrupted (SIGINT): run {d.name} in {lab / 'runs'} stopped before it finished; it resumes "
        "from its last checkpoint (written every epoch) when asked for again (the same command)"
    )
    assert not (d / "summary.json").exists()
    _rerun_and_compare(lab, int(load_checkpoint(d / "checkpoint.pt")["epoch"]) + 1)
