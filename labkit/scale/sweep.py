"""Run many configurations: in priority order, side by side on a GPU, inside a time budget.

Each lane is a thread with its own CUDA stream (and its own GPU, round-robin, where
several are visible). Small nets leave a GPU partly idle, so two or three lanes can
raise total throughput; `labkit.bench` measures whether they do. A job that cannot
finish before the deadline (by the rate measured so far, or `rate_guess`) is skipped, as
is every job once the deadline has passed; one that overruns is stopped at an epoch
boundary (its last epoch excepted); both stay out of the store's finished runs.

With `workers` the jobs are shared by that many processes instead, each bound to one GPU
(round-robin over the visible ones) or to the CPU, each running its own lanes: one
process per GPU sidesteps Python's GIL and keeps one run's failure (or CUDA error) from
touching the others. Workers take jobs in order from a shared list; the run store's lock
keeps two from training the same run.

    python -m labkit sweep --profile full --data-dir DIR --lanes 2 --budget-s 500
    python -m labkit sweep --profile full --data-dir DIR --workers 8   # 8 GPUs, one each
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import pickle
import platform
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..config import ConfigError, TrainConfig
from ..data import Dataset
from ..model import run_gflop
from ..runs import RunStore
from ..train import Hooks, device_name

__all__ = ["Job", "sweep", "Deadline", "execution_from_bench", "lanes_used", "sweep_record", "with_compile"]


class Deadline(Exception):
    """The sweep's time budget ran out during a run."""


@dataclass
class Job:
    name: str
    cfg: TrainConfig
    status: str = "pending"  # pending | done | cached | skipped | stopped | failed
    seconds: float = 0.0
    lane: int = -1
    worker: int = -1  # the worker process that took it (sweep(workers=N))
    error: str = ""
    work: float = field(default=0.0)  # GFLOP of training this job costs (estimate)


class GpuGate:
    """Lets runs train side by side in threads yet capture CUDA graphs safely.

    A capture fails if any other thread issues CUDA work meanwhile (seen on an H200:
    "operation not permitted when stream is capturing" from a run in another thread).
    Every run holds the gate shared while it trains and offers it at each step;
    a capture takes it exclusively, so it runs while every other run waits between steps.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._readers = 0
        self._writers_waiting = 0
        self._writing = False

    def enter(self) -> None:
        with self._cv:
            while self._writing or self._writers_waiting:
                self._cv.wait()
            self._readers += 1

    def leave(self) -> None:
        with self._cv:
            self._readers -= 1
            self._cv.notify_all()

    def pause_point(self) -> None:
        if self._writers_waiting:  # unlocked read: a stale value only delays by one step
            self.leave()
            self.enter()

    @contextlib.contextmanager
    def shared(self):
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextlib.contextmanager
    def exclusive(self):
        """For a thread that holds the gate shared: wait until it is alone, then run."""
        with self._cv:
            self._readers -= 1
            self._writers_waiting += 1
            self._cv.notify_all()
            while self._readers or self._writing:
                self._cv.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cv:
                self._writing = False
                self._readers += 1
                self._cv.notify_all()


GPU_GATE = GpuGate()


# Lanes pause between steps and take the GPU alone to seed a network and capture a graph.
LANE_HOOKS = Hooks(between_steps=GPU_GATE.pause_point, alone=GPU_GATE.exclusive)


def sweep(
    jobs: list[tuple[str, TrainConfig]],
    store: RunStore,
    data: Callable[[str, int], Dataset],
    lanes: int = 1,
    deadline: float | None = None,
    rate_guess: float | None = None,
    checkpoint_every: int = 1,
    log: Callable[[str], None] | None = print,
    workers: int = 0,
) -> list[Job]:
    """Train every job not yet finished in `store`, in order, on `lanes` threads.

    Args:
        data: (split, val_size) -> Dataset, called once per distinct split (in each worker).
        deadline: time.time() by which every run must have ended (None: no limit); no run starts after it.
        rate_guess: GFLOP/s one lane achieves (beside the others), used to skip jobs until a run has measured it.
        workers: 0 = this process; N = N worker processes (GPU i % GPUs each, or the CPU), each
            with `lanes` lanes. `data` and `log` then go to the workers, so they must pickle
            (module-level functions, functools.partial, bound methods of picklable objects).
    """
    on_gpu = _on_gpu(jobs)
    if lanes > 1 and any(c.compile for _, c in jobs):
        # torch.compile is not thread-safe: lanes would compile at once (several processes may).
        raise ConfigError("compile with lanes > 1: torch.compile is not thread-safe; use one lane, or --workers for processes")
    todo = [Job(n, c) for n, c in jobs]
    for j in todo:
        found = store.find(j.cfg, j.name)
        if found is not None and found.finished:
            j.status = "cached"
    if workers:
        return _sweep_workers(todo, store, data, workers, lanes, deadline, rate_guess, checkpoint_every, log, on_gpu)
    return _sweep_here(todo, store, data, lanes, deadline, rate_guess, checkpoint_every, log, on_gpu)


def _on_gpu(jobs: list[tuple[str, TrainConfig]]) -> bool:
    return torch.cuda.is_available() and all(c.device in ("auto", "cuda") for _, c in jobs)


def lanes_used(jobs: list[tuple[str, TrainConfig]], lanes: int) -> tuple[int, str]:
    """The lanes `sweep` runs (in each process) when asked for `lanes`: lanes share a GPU, so
    without one, or with a run set to the CPU, runs train one at a time. Returns the lanes
    and, when fewer than asked, why ('' otherwise)."""
    if lanes <= 1 or _on_gpu(jobs):
        return max(1, lanes), ""
    why = "no CUDA GPU here" if not torch.cuda.is_available() else "a run is set to device cpu"
    return 1, f"{why}, and lanes share a GPU: runs train one at a time"


def _sweep_here(
    todo: list[Job],
    store: RunStore,
    data: Callable[[str, int], Dataset],
    lanes: int,
    deadline: float | None,
    rate_guess: float | None,
    checkpoint_every: int,
    log: Callable[[str], None] | None,
    on_gpu: bool,
    gpu: int | None = None,
    claim: Callable[[int], bool] | None = None,
    worker: int = -1,
) -> list[Job]:
    """The lanes of one process. gpu: every lane's GPU (else lane i % GPUs). claim(i): True
    if this process may take job i (another worker process has not)."""
    lanes, _ = lanes_used([(j.name, j.cfg) for j in todo], lanes)
    n_gpus = torch.cuda.device_count() if on_gpu else 0
    cache: dict[tuple[str, int], Dataset] = {}
    lock = threading.RLock()
    measured: list[tuple[float, float]] = []  # (work, seconds) of finished runs

    def dataset(cfg: TrainConfig) -> Dataset:
        key = (cfg.split, cfg.val_size)
        with lock:
            if key not in cache:
                cache[key] = data(*key)
            return cache[key]

    def rate() -> float | None:
        if measured:
            return sum(w for w, _ in measured) / sum(s for _, s in measured)
        return rate_guess

    def next_job(lane: int) -> Job | None:
        with lock:
            for i, j in enumerate(todo):
                if j.status != "pending" or (claim is not None and not claim(i)):
                    continue
                j.worker = worker
                if deadline is not None and time.time() >= deadline:
                    # Past the deadline no run starts, estimate or none: it could only stop
                    # after its first epoch, unfinished.
                    j.status = "skipped"
                    if log:
                        log(f"skip {j.name} seed {j.cfg.seed}: the time budget has run out")
                    continue
                d = dataset(j.cfg)
                n = min(j.cfg.train_subset or len(d.train_y), len(d.train_y))
                j.work = run_gflop(j.cfg, n, len(d.val_y) + len(d.test_y) // j.cfg.epochs)
                r = rate()
                if deadline is not None and r and time.time() + j.work / r > deadline:
                    j.status = "skipped"
                    if log:
                        log(f"skip {j.name} seed {j.cfg.seed}: needs ~{j.work / r:.0f}s, {deadline - time.time():.0f}s left")
                    continue
                j.status, j.lane = "running", lane
                return j
        return None

    def stop_at_deadline(history: list[dict], epochs: int) -> None:
        # Not after the last epoch: its weights are trained, only the test and summary remain.
        if deadline is not None and len(history) < epochs and time.time() > deadline:
            raise Deadline(f"time budget ran out after epoch {len(history)}")

    def lane_main(lane: int) -> None:
        stream_ctx = None
        if on_gpu:
            torch.cuda.set_device(lane % n_gpus if gpu is None else gpu)  # per thread
            stream_ctx = torch.cuda.stream(torch.cuda.Stream())
            stream_ctx.__enter__()
        try:
            while (j := next_job(lane)) is not None:
                t0 = time.time()
                try:
                    with GPU_GATE.shared():
                        store.get(j.cfg, j.name, dataset(j.cfg), checkpoint_every=checkpoint_every, progress=False, log=None,
                                  on_epoch=functools.partial(stop_at_deadline, epochs=j.cfg.epochs), hooks=LANE_HOOKS)
                    j.status = "done"
                except Deadline as e:
                    j.status, j.error = "stopped", str(e)
                except Exception as e:  # one bad run must not end the sweep
                    j.status, j.error = "failed", f"{type(e).__name__}: {e}"
                    if log:
                        log(traceback.format_exc())
                j.seconds = time.time() - t0
                if j.status == "done":
                    with lock:
                        measured.append((j.work, j.seconds))
                if log:
                    r = store.find(j.cfg, j.name)
                    acc = (r.summary or {}).get("test_acc") if r else None
                    where = f"worker {worker} lane {lane}" if worker >= 0 else f"lane {lane}"
                    log(
                        f"[{where}] {j.status:7s} {store.run_id(j.cfg, j.name)} seed {j.cfg.seed}  "
                        f"{j.seconds:6.1f}s" + (f"  test_acc {acc:.4f}" if acc is not None else "") + (f"  {j.error}" if j.error else "")
                    )
        finally:
            if stream_ctx is not None:
                with GPU_GATE.shared():
                    torch.cuda.current_stream().synchronize()
                stream_ctx.__exit__(None, None, None)

    if lanes == 1:
        lane_main(0)
    else:
        errors: list[Exception] = []

        def lane(i: int) -> None:
            try:
                lane_main(i)
            except Exception as e:  # the data could not be read, say: raised below, as with one lane
                errors.append(e)

        threads = [threading.Thread(target=lane, args=(i,), name=f"lane{i}") for i in range(lanes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    return todo


# ---------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------


def _claim(taken, i: int) -> bool:
    with taken.get_lock():
        if taken[i]:
            return False
        taken[i] = 1
        return True


def _worker_main(worker, todo, store, data, lanes, deadline, rate_guess, checkpoint_every, log, on_gpu, gpu, cpu_threads, taken, results):
    """One worker process: its lanes take jobs nobody has claimed; reports the ones it took."""
    if gpu is None:
        # N CPU workers share the cores: N processes x all cores each would thrash.
        torch.set_num_threads(cpu_threads)
    error = None
    try:
        _sweep_here(
            todo, store, data, lanes, deadline, rate_guess, checkpoint_every, log, on_gpu,
            gpu=gpu, claim=functools.partial(_claim, taken), worker=worker,
        )
    except Exception as e:  # e.g. the data cannot be read: the parent raises it, as without workers
        error = e
        try:
            pickle.dumps(e)
        except Exception:
            error = RuntimeError(f"{type(e).__name__}: {e}")
    finally:  # whatever happened, say which jobs this worker took and how they ended
        results.put((worker, [(i, j) for i, j in enumerate(todo) if j.worker == worker], error))


def _sweep_workers(todo, store, data, workers, lanes, deadline, rate_guess, checkpoint_every, log, on_gpu) -> list[Job]:
    # spawn, not fork: a forked child of a process that has touched CUDA (or holds threads)
    # cannot use CUDA; and notebooks run this too.
    ctx = multiprocessing.get_context("spawn")
    taken = ctx.Array("b", len(todo))  # 1 = a worker took job i
    results = ctx.Queue()
    n_gpus = torch.cuda.device_count() if on_gpu else 0
    cpu_threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(w, todo, store, data, lanes, deadline, rate_guess, checkpoint_every, log, on_gpu,
                  w % n_gpus if n_gpus else None, cpu_threads, taken, results),
            name=f"labkit-sweep-{w}",
        )
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    reports: dict[int, list] = {}
    errors: list[Exception] = []

    def receive(timeout: float) -> None:
        w, done, error = results.get(timeout=timeout)
        reports[w] = done
        if error is not None:
            errors.append(error)

    while len(reports) < len(procs):
        try:
            receive(1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):  # a worker died without reporting
                try:
                    while True:
                        receive(0.5)
                except queue.Empty:
                    break
    for p in procs:
        p.join()
    if errors:
        raise errors[0]
    for done in reports.values():
        for i, j in done:
            todo[i] = j
    for i, j in enumerate(todo):
        if j.status in ("pending", "running"):
            j.status, j.error = "failed", "its worker process died" if taken[i] else "no worker took it: every worker process ended first"
    return todo


# ---------------------------------------------------------------------------------------
# Choosing how to run, from a benchmark; recording what a sweep took
# ---------------------------------------------------------------------------------------


def execution_from_bench(bench: dict, epochs: int = 30, min_gain: float = 1.1) -> dict:
    """Lanes and compile mode for a sweep of `epochs`-epoch runs, from a `labkit bench` result.

    Two ways to beat one plain lane, each measured against one plain lane by the bench:
    runs side by side (its lanes probe: total images/s of k lanes over 1 lane), or one lane
    under torch.compile (its steady epoch, plus the compile warm-up spread over `epochs`,
    since every run compiles anew). The faster wins if it gains at least `min_gain`; they are
    not combined, because the probe measured lanes uncompiled.

    Returns {"lanes", "compile", "rate_gflops" (one lane, for skipping at a deadline), "why"}.
    """
    try:
        n = bench["train_images_per_epoch"]
        gflop = bench["train_gflop_per_image"]
        plain = bench["labkit"]
        plain_s, plain_first = plain["steady_epoch_seconds"], plain["epoch_seconds"][0]
    except (KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"not a `labkit bench` result: missing {e}") from None
    for key, v in (("train_images_per_epoch", n), ("train_gflop_per_image", gflop),
                   ("labkit.steady_epoch_seconds", plain_s), ("labkit.epoch_seconds[0]", plain_first)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
            raise ConfigError(f"not a `labkit bench` result: {key} must be a positive number, got {v!r}")
    options = [(1.0, 1, "", n / plain_s, "one lane, no compile")]
    probes = {p["lanes"]: p for p in bench.get("lanes", []) if "error" not in p and "total_images_per_s" in p}
    if 1 in probes:
        for k, p in probes.items():
            if k > 1:
                gain = p["total_images_per_s"] / probes[1]["total_images_per_s"]
                per_lane = n / plain_s * gain / k
                options.append((gain, k, "", per_lane, f"{k} lanes: {gain:.2f}x one lane (bench lanes probe)"))
    c = bench.get("labkit_compiled")
    if c and "error" not in c and c.get("step_mode") == plain.get("step_mode"):  # compiled, and graphed alike
        extra_warmup = max(0.0, (c["epoch_seconds"][0] - c["steady_epoch_seconds"]) - (plain_first - plain_s))
        per_epoch = c["steady_epoch_seconds"] + extra_warmup / epochs
        gain = plain_s / per_epoch
        options.append(
            (gain, 1, c["compile"], n / c["steady_epoch_seconds"],
             f"compile {c['compile']}: {gain:.2f}x one lane over {epochs} epochs ({extra_warmup:.0f}s extra warm-up a run)")
        )
    best = max(options[1:], key=lambda o: o[0], default=options[0])
    if best[0] < min_gain:
        why = "one lane, no compile: " + (
            "nothing measured beats it" if len(options) == 1 else f"best option gains only {best[0]:.2f}x ({best[4]})"
        )
        best = options[0][:4] + (why,)
    gain, lanes, mode, images_per_s, why = best
    return {"lanes": lanes, "compile": mode, "rate_gflops": images_per_s * gflop, "why": why}


def with_compile(jobs: list[tuple[str, TrainConfig]], mode: str, chosen: bool) -> tuple[list[tuple[str, TrainConfig]], int]:
    """`jobs` with compile `mode` set; when it was chosen from a benchmark (`chosen`), not for
    runs with dropout, whose compiled step is not graphed (labkit.step.Stepper): the bench's
    gain, measured on the network without dropout, does not hold for them. Returns the jobs
    and how many were left uncompiled for that reason."""
    if not mode:
        return jobs, 0
    out = [(n, c if chosen and c.dropout else c.replace(compile=mode)) for n, c in jobs]
    return out, sum(1 for _, c in jobs if chosen and c.dropout)


def machine_name(device: torch.device) -> str:
    """Where a benchmark or a sweep ran: the GPU's name, or the CPU's kind and torch's threads."""
    if device.type == "cuda":
        return device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sweep_record(done: list[Job], store: RunStore, wall_seconds: float, **meta) -> dict:
    """What a sweep took, run by run, as JSON-able data: the whole-lab wall time record.

    `from_nothing` is true only when no run came from the store and none was skipped or
    stopped: then `wall_seconds` is the time of the runs swept from nothing. `whole_plan` is
    false when `only` (sweep --only: those notebooks' runs) narrowed the plan: then it is not
    the protocol's time.
    """
    import datetime as _dt

    from ..runs import code_version

    rows = []
    for j in done:
        r = store.find(j.cfg, j.name)
        s = (r.summary or {}) if r is not None and r.finished else {}
        rows.append({
            "run": store.run_id(j.cfg, j.name), "name": j.name, "seed": j.cfg.seed, "epochs": j.cfg.epochs,
            "status": j.status, "seconds": round(j.seconds, 3), "lane": j.lane, "worker": j.worker,
            "train_seconds": s.get("train_seconds"), "step_mode": s.get("step_mode"),
            "final_val_acc": _finite(s.get("final_val_acc")), "test_acc": _finite(s.get("test_acc")),
            "error": j.error or None,
        })
    counts = {k: sum(j.status == k for j in done) for k in ("done", "cached", "skipped", "stopped", "failed")}
    cuda = torch.cuda.is_available()
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": machine_name(torch.device("cuda", 0) if cuda else torch.device("cpu")),
        "gpus": torch.cuda.device_count() if cuda else 0,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "code_version": code_version(),
        **meta,
        "wall_seconds": round(wall_seconds, 3),
        "counts": counts,
        "from_nothing": counts["done"] == len(done),
        "whole_plan": not meta.get("only"),
        "train_seconds_sum": round(sum(r["train_seconds"] or 0.0 for r in rows if r["status"] == "done"), 3),
        "jobs": rows,
    }


def _finite(x):
    """None for a missing or NaN number (strict JSON has no NaN)."""
    return None if x is None or x != x else x
