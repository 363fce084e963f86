"""Many runs in priority order inside a time budget, side by side in lanes (threads with a CUDA stream
each: small nets leave a GPU partly idle) or in worker processes, one per GPU (labkit.scale.workers)."""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError, TrainConfig
from ..data import Dataset
from ..model import run_gflop
from ..runs import RunStore, atomic_write_text, check_writable, code_version
from ..step import device_name
from .gate import GPU_GATE, LANE_HOOKS
from .workers import run_workers

STATUSES = ("done", "cached", "skipped", "stopped", "failed")
Jobs = list[tuple[str, TrainConfig]]  # (run name, config), in priority order


class Deadline(Exception):
    """The sweep's time budget ran out during a run."""


@dataclass
class Job:
    name: str
    cfg: TrainConfig
    status: str = "pending"  # pending | running | done | cached | skipped | stopped | failed
    seconds: float = 0.0
    lane: int = -1
    worker: int = -1  # the worker process that took it (sweep(workers=N))
    error: str = ""
    work: float = 0.0  # GFLOP of training this job costs (estimate)


def sweep(jobs: Jobs, store: RunStore, data: Callable[[str, int], Dataset], lanes: int = 1,
          deadline: float | None = None, rate_guess: float | None = None, checkpoint_every: int = 1,
          log: Callable[[str], None] | None = print, workers: int = 0) -> list[Job]:
    """Train every job not yet finished in `store`, in order, on `lanes` threads; returns the jobs as they ended.

    data: (split, val_size) -> Dataset, read once per split in each process. deadline: time.time() by which
    every run must have ended: a job that cannot (at the rate measured so far, or `rate_guess` GFLOP/s a
    lane) is skipped, one that overruns stops at an epoch's end. workers: N processes, each with `lanes`
    lanes, to which `data` and `log` must pickle (module-level functions, partials)."""
    if lanes > 1 and any(c.compile for _, c in jobs):
        # torch.compile is not thread-safe: lanes would compile at once (several processes may).
        raise ConfigError("compile with lanes > 1: torch.compile is not thread-safe; use one lane, or --workers for "
                          "processes")
    todo = [Job(n, c) for n, c in jobs]
    for j in todo:
        found = store.find(j.cfg, j.name)
        if found is not None and found.finished:
            j.status = "cached"
    on_gpu = _on_gpu(jobs)
    lanes_of = functools.partial(_Lanes, store, data, lanes_used(jobs, lanes)[0], deadline, rate_guess,
                                 checkpoint_every, log, on_gpu)  # it pickles, for worker processes
    if not workers:
        return lanes_of(todo).run()
    if any(j.status == "pending" for j in todo):  # no process started for nothing
        run_workers(lanes_of, todo, workers, torch.cuda.device_count() if on_gpu else 0)
    return todo


def _on_gpu(jobs: Jobs) -> bool:
    return torch.cuda.is_available() and all(c.device in ("auto", "cuda") for _, c in jobs)


def lanes_used(jobs: Jobs, lanes: int) -> tuple[int, str]:
    """The lanes `sweep` runs (in each process) when asked for `lanes`, and why fewer ('' if not):
    lanes share a GPU, so without one, or with a run set to the CPU, runs train one at a time."""
    if lanes <= 1 or _on_gpu(jobs):
        return max(1, lanes), ""
    why = "no CUDA GPU here" if not torch.cuda.is_available() else "a run is set to device cpu"
    return 1, f"{why}, and lanes share a GPU: runs train one at a time"


@dataclass
class _Lanes:
    """One process's lanes over `todo`. gpu: every lane's GPU (else lane i % GPUs); claim(i): whether
    this process may take job i (no other worker process has); worker: this process's number."""

    store: RunStore
    data: Callable[[str, int], Dataset]
    lanes: int
    deadline: float | None
    rate_guess: float | None
    checkpoint_every: int
    log: Callable[[str], None] | None
    on_gpu: bool
    todo: list[Job]
    gpu: int | None = None
    claim: Callable[[int], bool] | None = None
    worker: int = -1

    def __post_init__(self) -> None:
        self.n_gpus = torch.cuda.device_count() if self.on_gpu else 0
        self.cache: dict[tuple[str, int], Dataset] = {}
        self.lock = threading.RLock()
        self.measured: list[tuple[float, float]] = []  # (work, seconds) of finished runs

    def dataset(self, cfg: TrainConfig) -> Dataset:
        key = (cfg.split, cfg.val_size)
        with self.lock:
            if key not in self.cache:
                self.cache[key] = self.data(*key)
            return self.cache[key]

    def skip(self, j: Job, why: str) -> None:
        j.status = "skipped"
        if self.log:
            self.log(f"skip {j.name} seed {j.cfg.seed}: {why}")

    def next_job(self, lane: int) -> Job | None:
        deadline = self.deadline
        with self.lock:
            for i, j in enumerate(self.todo):
                if j.status != "pending" or (self.claim is not None and not self.claim(i)):
                    continue
                j.worker = self.worker
                if deadline is not None and time.time() >= deadline:
                    # No run starts once it has passed: it could only stop unfinished after an epoch.
                    self.skip(j, "the time budget has run out")
                    continue
                d = self.dataset(j.cfg)
                n = min(j.cfg.train_subset or len(d.train_y), len(d.train_y))
                j.work = run_gflop(j.cfg, n, len(d.val_y) + len(d.test_y) // j.cfg.epochs)
                ran = self.measured  # GFLOP/s of this process's lanes so far, else the guess
                r = sum(w for w, _ in ran) / sum(s for _, s in ran) if ran else self.rate_guess
                if deadline is not None and r and time.time() + j.work / r > deadline:
                    self.skip(j, f"needs ~{j.work / r:.0f}s, {deadline - time.time():.0f}s left")
                    continue
                j.status, j.lane = "running", lane
                return j
        return None

    def stop_at_deadline(self, history: list[dict], epochs: int) -> None:
        # Not after the last epoch: its weights are trained, only the test and summary remain.
        if self.deadline is not None and len(history) < epochs and time.time() > self.deadline:
            raise Deadline(f"time budget ran out after epoch {len(history)}")

    def train(self, j: Job) -> None:
        t0 = time.time()
        try:
            with GPU_GATE.shared():
                self.store.get(j.cfg, j.name, self.dataset(j.cfg), checkpoint_every=self.checkpoint_every,
                               progress=False, log=None, hooks=LANE_HOOKS,
                               on_epoch=functools.partial(self.stop_at_deadline, epochs=j.cfg.epochs))
            j.status = "done"
        except Deadline as e:
            j.status, j.error = "stopped", str(e)
        except Exception as e:  # one bad run must not end the sweep
            j.status, j.error = "failed", f"{type(e).__name__}: {e}"
            if self.log:
                self.log(traceback.format_exc())
        j.seconds = time.time() - t0
        if j.status == "done":
            with self.lock:
                self.measured.append((j.work, j.seconds))
        if self.log:
            r = self.store.find(j.cfg, j.name)
            acc = (r.summary or {}).get("test_acc") if r else None
            where = f"worker {self.worker} lane {j.lane}" if self.worker >= 0 else f"lane {j.lane}"
            self.log(
                f"[{where}] {j.status:7s} {self.store.run_id(j.cfg, j.name)} seed {j.cfg.seed}  {j.seconds:6.1f}s"
                + (f"  test_acc {acc:.4f}" if acc is not None else "") + (f"  {j.error}" if j.error else "")
            )

    def lane(self, lane: int) -> None:
        stream_ctx = None
        if self.on_gpu:
            torch.cuda.set_device(lane % self.n_gpus if self.gpu is None else self.gpu)  # per thread
            stream_ctx = torch.cuda.stream(torch.cuda.Stream())
            stream_ctx.__enter__()
        try:
            while (j := self.next_job(lane)) is not None:
                self.train(j)
        finally:
            if stream_ctx is not None:
                with GPU_GATE.shared():
                    torch.cuda.current_stream().synchronize()
                stream_ctx.__exit__(None, None, None)

    def run(self) -> list[Job]:
        if self.lanes == 1:
            self.lane(0)
            return self.todo
        with ThreadPoolExecutor(self.lanes, thread_name_prefix="lane") as pool:
            ended = [pool.submit(self.lane, i) for i in range(self.lanes)]
        for f in ended:
            f.result()  # a lane's error (the data could not be read, say), raised once all have ended
        return self.todo


def machine_name(device: torch.device) -> str:
    """Where a benchmark or a sweep ran: the GPU's name, or the CPU's kind and torch's threads."""
    if device.type == "cuda":
        return device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sweep_record(done: list[Job], store: RunStore, wall_seconds: float, **meta) -> dict:
    """What a sweep took, run by run, as JSON. `from_nothing`: no run came from the store, none was
    skipped or stopped (`wall_seconds` is then the time from nothing); `whole_plan`: no `only`."""
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
    counts = {k: sum(j.status == k for j in done) for k in STATUSES}
    cuda = torch.cuda.is_available()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
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


def _check_options(args) -> None:
    """Every option of `labkit sweep` checked before anything is read or trained."""
    for wrong, message in [
        (args.workers < 0, f"--workers must be >= 0 (0 = this process), got {args.workers}"),
        (args.lanes < 1, f"--lanes must be a positive int, got {args.lanes}"),
        (args.checkpoint_every < 0,
         f"--checkpoint-every must be >= 0 (0 = only at the end), got {args.checkpoint_every}"),
        (args.budget_s is not None and not args.budget_s > 0,
         f"--budget-s must be > 0 seconds (leave it out for no limit), got {args.budget_s}"),
        (args.rate_guess is not None and not args.rate_guess > 0,
         f"--rate-guess must be > 0 GFLOP/s, got {args.rate_guess}"),
        (args.deadline is not None and not args.deadline > time.time(),
         f"--deadline {args.deadline or 0:.0f} (unix time) has passed already"),
        (args.deadline is not None and args.budget_s is not None, "give --deadline or --budget-s, not both"),
    ]:
        if wrong:
            raise ConfigError(message)
    check_writable(args.timing_json, "--timing-json")


def main_sweep(args) -> int:
    """`labkit sweep`: the profile's planned runs. Its folders hang from the project root, as for `lab` and
    the notebooks; paths typed here are taken from here."""
    from ..lab import Lab, plan, project_root

    _check_options(args)
    # log=None: the Lab's note on an unused data_dir would repeat the one below. The root relative
    # to here, as the notebooks give it: no machine's folder names in what the sweep prints.
    lab = Lab(args.profile, data_dir=args.data_dir, runs_dir=args.runs_dir, root=os.path.relpath(project_root()),
              progress=False, log=None)
    if lab.profile.synthetic and args.data_dir:
        print(f"note: the {args.profile} profile trains on synthetic data; --data-dir {args.data_dir} is not used")
    rows = plan(args.profile, args.seeds, protocol=args.protocol)
    only = args.only.split(",") if args.only else None
    if only:
        notebooks = {nb for nb, _, _ in rows}
        if unknown := sorted(set(only) - notebooks):
            raise ConfigError(f"--only: no planned runs in {unknown}; notebooks: {sorted(notebooks)}")
        rows = [r for r in rows if r[0] in only]
    lanes, mode = args.lanes, args.compile
    jobs = [(name, cfg.replace(compile=mode) if mode else cfg) for _, name, cfg in rows]
    used, fewer = lanes_used(jobs, lanes)  # what runs, and what the record says: not what was asked
    if fewer:
        print(f"sweep: 1 lane, not the {lanes} --lanes asks for: {fewer}")
    if not lab.profile.synthetic and any(not ((r := lab.store.find(c, n)) and r.finished) for n, c in jobs):
        lab.data()  # the data, and the store's runs checked against them, before any run starts
    print(f"sweep: {len(jobs)} planned runs, run store {lab.store.root}")
    deadline = args.deadline or (time.time() + args.budget_s if args.budget_s is not None else None)
    t0, done = time.time(), []
    try:
        done = sweep(jobs, lab.store, lab.data, lanes=lanes, deadline=deadline, rate_guess=args.rate_guess,
                     checkpoint_every=args.checkpoint_every, workers=args.workers)
    finally:
        wall = time.time() - t0
        if args.timing_json and done:
            rec = sweep_record(
                done, lab.store, wall, command=args.command, profile=args.profile, protocol=args.protocol,
                seeds=args.seeds or lab.profile.seeds, lanes=used, workers=args.workers, compile=mode or "off",
                data_dir=args.data_dir, only=only,
            )
            atomic_write_text(Path(args.timing_json), json.dumps(rec, indent=2))
    counts = {s: sum(j.status == s for j in done) for s in STATUSES}
    print(f"sweep: {len(done)} jobs in {wall:.1f}s wall: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if args.timing_json:
        print(f"wrote {args.timing_json}")
    return 1 if counts["failed"] else 0


def add_parser(sub) -> None:
    """The `sweep` subcommand's options (labkit.cli)."""
    p = sub.add_parser("sweep", help="train a profile's planned runs in priority order, side by side, in a time budget")
    p.add_argument("--profile", default="full", help="full | quick | smoke")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default $LABKIT_DATA or data/ in the project root; "
                   "the smoke profile makes its own); a relative path is taken from here")
    p.add_argument("--runs-dir", help="run store (default: the profile's, in the project root: the nearest folder from here "
                   "up that holds notebooks/, else here); a relative path is taken from here")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: the profile's)")
    p.add_argument("--only", help="comma-separated notebooks to include, e.g. 04_ablations,05_final")
    p.add_argument("--protocol", default="lab", choices=["lab", "seed"],
                   help="lab: every planned run; seed: the seed report's protocol only (ablations, final, depths; no modern)")
    p.add_argument("--lanes", type=int, default=1, help="runs side by side on each GPU; without a GPU, one")
    p.add_argument("--deadline", type=float, help="unix time by which every run must end")
    p.add_argument("--budget-s", type=float, help="seconds from now by which every run must end")
    p.add_argument("--rate-guess", type=float, help="GFLOP/s of one lane, until a run has measured it")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (0 = end only)")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes sharing the jobs, each on one GPU (round-robin) with --lanes lanes; 0 = this process")
    p.add_argument("--compile", default="",
                   help="torch.compile mode for every run (an execution setting: same run ids)")
    p.add_argument("--timing-json", help="write the sweep's wall time and every run's time here (JSON)")
    p.set_defaults(fn=main_sweep)
