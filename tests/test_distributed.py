"""Several processes, on the CPU with gloo: a run under torchrun (DDP) computes what one
process computes, resumes after a SIGKILL, and a sweep over worker processes gives what a
sweep in one process gives.

The runs train with SGD at a small learning rate: a tiny net's training amplifies rounding
differences (summation order over two ranks) by ~1e4 in a few dozen steps at larger rates,
which would hide a real difference; here the two ranks must agree to ~1e-6 while the weights
move by ~1e-3.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import reliability_cli as R
import torch
import torch.multiprocessing as mp

from labkit.checkpoint import load_checkpoint
from labkit.config import ConfigError, parse_overrides, preset
from labkit.data import DataError, load_cifar10
from labkit.runs import RunStore
from labkit.scale.sweep import sweep

EPOCHS = 5
# 201 images in batches of 64: the last batch (9) splits 4 / 5 over the two ranks.
SETS = R.SETS + ["batch_size=64", "train_subset=201", "optimizer=sgd", "lr=0.002", "precision=fp32"]
TIMING = {"seconds", "images_per_s", "train_seconds", "images_per_s_mean", "wall_seconds", "finished_at"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_dir(runs: Path) -> Path:
    return runs.parent / "torchelastic"


def _train_args(runs: Path, data: Path, procs: int) -> list[str]:
    launch = [sys.executable, "-m", "labkit"]
    if procs > 1:
        # --log-dir: by default torchrun keeps its logs in a new /tmp/torchelastic_* that it
        # never removes (three more after every run of this file); here pytest's tmp holds them.
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(procs),
                  "--master_addr", "127.0.0.1", "--master_port", str(_port()), "--log-dir", str(_log_dir(runs)),
                  "-m", "labkit"]
    args = launch + ["train", "--preset", "seed", "--epochs", str(EPOCHS), "--synthetic", "--synthetic-size", str(R.PER_BATCH)]
    args += ["--runs-dir", str(runs), "--data-dir", str(data)]
    for s in SETS:
        args += ["--set", s]
    return args


def _start(args: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    # Its own session: a kill reaches torchrun and both ranks at once.
    return R.start(args, log, cwd, new_session=True)


def _kill_all(p: subprocess.Popen) -> None:
    """SIGKILL torchrun and every process under it at once, as a node failure or a batch
    system's kill would. (torchrun starts each rank in its own session: a SIGKILL to
    torchrun's process group alone leaves the ranks training.)"""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [p.pid], [p.pid]
    while todo:
        kids = children.get(todo.pop(), [])
        tree += kids
        todo += kids
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    R.finish(p, timeout=180)


def _run_dir(runs: Path) -> Path:
    cfg = preset("seed", **parse_overrides(SETS), epochs=EPOCHS)
    return runs / RunStore.run_id(cfg, "seed")


def _assert_close_runs(got: Path, want: Path, exact: bool = False) -> None:
    a, b = load_checkpoint(got / "checkpoint.pt")["model"], load_checkpoint(want / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        if exact or not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    ra, rb = R.metric_rows(got), R.metric_rows(want)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb] == [str(e) for e in range(1, EPOCHS + 1)]
    for x, y in zip(ra, rb, strict=True):
        for k in x:
            if k not in TIMING:
                assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-5, abs=1e-6 if exact else 0.011), k
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (got, want))
    assert sa["test_acc"] == pytest.approx(sb["test_acc"], abs=0 if exact else 0.011)  # a 200-image test set: 2 images


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A 2-process run and a 1-process run of the same config, side by side."""
    tmp = tmp_path_factory.mktemp("ddp")
    R.make_data(tmp / "data")
    one = _start(_train_args(tmp / "one", tmp / "data", 1), tmp / "one.log", tmp)
    two = _start(_train_args(tmp / "two", tmp / "data", 2), tmp / "two.log", tmp)
    assert R.finish(one, timeout=180) == 0, (tmp / "one.log").read_text()
    assert R.finish(two, timeout=180) == 0, (tmp / "two.log").read_text()
    return tmp


@pytest.mark.slow  # end to end, in processes
def test_two_processes_train_what_one_process_trains(lab):
    log = (lab / "two.log").read_text()
    assert "on 2 processes" in log and len(R.epoch_lines(log)) == EPOCHS  # rank 0 alone prints
    summary = json.loads((_run_dir(lab / "two") / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["batch_norm"] == "global batch"
    _assert_close_runs(_run_dir(lab / "two"), _run_dir(lab / "one"))
    assert not list(_run_dir(lab / "two").glob(".*.tmp"))
    assert list(_log_dir(lab / "two").glob("*/attempt_0")), "torchrun's logs are not in the test's folder"


@pytest.mark.slow  # end to end, in processes
def test_two_processes_killed_then_resumed(lab, tmp_path):
    d = _run_dir(tmp_path / "runs")
    p = _start(_train_args(tmp_path / "runs", lab / "data", 2), tmp_path / "killed.log", tmp_path)
    R.wait_for(lambda: (d / "checkpoint.pt").exists(), what="the first checkpoint", proc=p, timeout=120)
    _kill_all(p)
    assert not (d / "summary.json").exists(), "finished before the kill: nothing was resumed"
    again = _start(_train_args(tmp_path / "runs", lab / "data", 2), tmp_path / "again.log", tmp_path)
    assert R.finish(again, timeout=180) == 0, (tmp_path / "again.log").read_text()
    log = (tmp_path / "again.log").read_text()
    assert "resumed from" in log and 0 < len(R.epoch_lines(log)) < EPOCHS, log
    _assert_close_runs(d, _run_dir(lab / "two"), exact=True)  # the uninterrupted 2-process run, bit for bit
    _assert_close_runs(d, _run_dir(lab / "one"))
    assert len(list(_log_dir(tmp_path / "runs").glob("*/attempt_0"))) == 2  # both torchruns logged here


# -- finer checks, in processes made with torch.multiprocessing.spawn ----------------------


def _rank_main(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from labkit.scale.distributed import DistributedBatchNorm2d, Group
    from labkit.train import Hooks, train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    # Global batches of 9 (split 4 / 5) and of 1 (rank 0 gets nothing): DistributedBatchNorm2d
    # on the slices equals BatchNorm2d on the whole batch, forward, backward, running stats.
    for size in (9, 1):
        g = torch.Generator().manual_seed(size)
        x, w = torch.randn(size, 4, 5, 5, generator=g) * 3 + 7, torch.randn(size, 4, 5, 5, generator=g)
        bn = DistributedBatchNorm2d(4)
        torch.nn.init.uniform_(bn.weight, generator=g)
        lo, hi = size * rank // 2, size * (rank + 1) // 2
        xs = x[lo:hi].clone().requires_grad_()
        for _ in range(2):
            y = bn(xs)
            (y * w[lo:hi]).sum().backward()
        grads = torch.stack([bn.weight.grad, bn.bias.grad])
        dist.all_reduce(grads)
        results[size] = {"y": y.detach(), "x_grad": xs.grad, "grads": grads, **{k: v.clone() for k, v in bn.state_dict().items()}}
    try:
        train(preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=33, device="cpu"), None, progress=False, log=None,
              hooks=Hooks(group=Group()))
    except ConfigError as e:
        results["error"] = str(e)
    torch.save(results, f"{out}.{rank}")
    dist.destroy_process_group()


def test_distributed_batchnorm_is_batchnorm_over_the_global_batch(tmp_path):
    mp.spawn(_rank_main, args=(_port(), str(tmp_path / "out")), nprocs=2)
    ranks = [torch.load(tmp_path / f"out.{r}", weights_only=True) for r in range(2)]
    for size in (9, 1):
        g = torch.Generator().manual_seed(size)
        x, w = torch.randn(size, 4, 5, 5, generator=g) * 3 + 7, torch.randn(size, 4, 5, 5, generator=g)
        bn = torch.nn.BatchNorm2d(4)
        torch.nn.init.uniform_(bn.weight, generator=g)
        xs = x.clone().requires_grad_()
        for _ in range(2):
            y = bn(xs)
            (y * w).sum().backward()
        close = functools.partial(torch.testing.assert_close, rtol=1e-5, atol=1e-5)
        close(torch.cat([r[size]["y"] for r in ranks]), y.detach())
        close(torch.cat([r[size]["x_grad"] for r in ranks]), xs.grad)
        for r in ranks:
            close(r[size]["grads"], torch.stack([bn.weight.grad, bn.bias.grad]))
            for k, v in bn.state_dict().items():
                close(r[size][k], v, msg=lambda m, k=k: f"{k}: {m}")
    assert all("batch_size=33" in r["error"] and "2 processes" in r["error"] for r in ranks)


# -- sweeps over worker processes ------------------------------------------------------------


def test_sweep_over_two_worker_processes_equals_one_after_another(tmp_path, synth_root):
    base = preset("seed", width=8, lays=(1, 1, 1, 1), seed_extra_block=False, batch_size=64, epochs=1,
                  device="cpu", channels_last=False, train_subset=256)
    jobs = [("a", base), ("b", base.replace(lr=2e-3)), ("c", base.replace(seed=1)), ("d", base.replace(dropout=0.4))]
    data = functools.partial(load_cifar10, synth_root, allow_download=False)  # pickles: goes to the workers
    one, two = RunStore(tmp_path / "one"), RunStore(tmp_path / "two")
    seq = sweep(jobs, one, data, log=None)
    par = sweep(jobs, two, data, log=None, workers=2)
    assert [j.status for j in seq] == [j.status for j in par] == ["done"] * 4
    assert {j.worker for j in par} <= {0, 1} and all(j.worker >= 0 for j in par)  # each job done by a worker
    for name, cfg in jobs:
        a, b = one.find(cfg, name), two.find(cfg, name)
        for k, v in a.summary.items():
            if k not in TIMING:
                assert b.summary[k] == (pytest.approx(v, rel=1e-6) if isinstance(v, float) else v), k
        wa, wb = load_checkpoint(a.checkpoint)["model"], load_checkpoint(b.checkpoint)["model"]
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7)
    assert [j.status for j in sweep(jobs, two, data, log=None, workers=2)] == ["cached"] * 4


def test_sweep_workers_raise_a_data_error_like_one_process(tmp_path, capfd):
    base = preset("seed", width=8, lays=(1, 1, 1, 1), epochs=1, device="cpu", train_subset=64)
    jobs = [("a", base), ("b", base.replace(seed=1))]
    data = functools.partial(load_cifar10, tmp_path / "nodata", allow_download=False)
    store = RunStore(tmp_path / "runs")
    with pytest.raises(DataError, match="nodata"):
        sweep(jobs, store, data, log=None)
    with pytest.raises(DataError, match="nodata"):
        sweep(jobs, store, data, log=None, workers=1)
    assert "Traceback" not in capfd.readouterr().err  # the worker sent the error back, quietly
    assert not any(store.root.glob("*/config.json"))  # nothing started


@pytest.mark.slow  # end to end, in processes
def test_lab_prefetches_a_notebooks_runs_with_a_worker_per_gpu(tmp_path, monkeypatch):
    from labkit.lab import Lab
    from labkit.notebook import prefetch

    if torch.cuda.is_available():
        pytest.skip("checks the logic on a CPU, pretending to see two GPUs")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    seen = []
    lab = Lab("smoke", root=str(tmp_path), log=lambda m: seen.append(m))  # a lambda: must not reach the workers
    pairs = [("a", preset("seed", epochs=15)), ("b", preset("seed", epochs=15, seed=1))]  # 1 epoch in smoke
    prefetch(lab, pairs)
    assert seen == ["prefetch: 2 runs on 2 GPUs, 2 done, 0 failed"]
    assert all(lab.store.find(lab.config(c), n).finished for n, c in pairs)
    prefetch(lab, pairs)  # nothing left to train
    assert len(seen) == 1
