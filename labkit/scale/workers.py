"""A sweep's jobs shared by worker processes (sweep(workers=N)), each bound to one GPU, round-robin, or
to the CPU. Workers take jobs in order from a shared list; the run store's lock keeps two from
training the same run."""

from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import queue
from collections.abc import Callable

import torch


def _claim(taken, i: int) -> bool:
    with taken.get_lock():
        if taken[i]:
            return False
        taken[i] = 1
        return True


def _worker_main(lanes: Callable, todo: list, worker: int, gpu: int | None, cpu_threads: int, taken, results) -> None:
    """One worker process: its lanes take the jobs nobody has claimed; it reports the ones it took."""
    if gpu is None:
        torch.set_num_threads(cpu_threads)  # N processes x all cores each would thrash
    error = None
    try:
        lanes(todo, gpu, functools.partial(_claim, taken), worker).run()
    except Exception as e:  # e.g. the data cannot be read: the parent raises it, as without workers
        error = e
        try:
            pickle.dumps(e)
        except Exception:
            error = RuntimeError(f"{type(e).__name__}: {e}")
    finally:  # whatever happened, say which jobs this worker took and how they ended
        results.put((worker, [(i, j) for i, j in enumerate(todo) if j.worker == worker], error))


def run_workers(lanes: Callable, todo: list, workers: int, n_gpus: int) -> None:
    """Train the sweep's jobs `todo` (updated in place) in `workers` processes (worker w on GPU
    w % n_gpus, or the CPU); lanes(todo, gpu, claim, worker), picklable, makes one process's lanes."""
    # spawn, not fork: a forked child of a process that has touched CUDA (or holds threads)
    # cannot use CUDA; and notebooks run this too.
    ctx = multiprocessing.get_context("spawn")
    taken = ctx.Array("b", len(todo))  # 1 = a worker took job i
    results = ctx.Queue()
    cpu_threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [
        ctx.Process(target=_worker_main, name=f"labkit-sweep-{w}",
                    args=(lanes, todo, w, w % n_gpus if n_gpus else None, cpu_threads, taken, results))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    reports: dict[int, list] = {}
    errors: list[Exception] = []
    while len(reports) < len(procs):
        alive = any(p.is_alive() for p in procs)
        try:
            w, done, error = results.get(timeout=1.0 if alive else 0.5)
        except queue.Empty:
            if alive:
                continue
            break  # every worker has ended, one without reporting
        reports[w] = done
        if error is not None:
            errors.append(error)
    for p in procs:
        p.join()
    if errors:
        raise errors[0]
    for done in reports.values():
        for i, j in done:
            todo[i] = j
    for i, j in enumerate(todo):
        if j.status in ("pending", "running"):
            j.status = "failed"
            j.error = "its worker process died" if taken[i] else "no worker took it: every worker process ended first"
