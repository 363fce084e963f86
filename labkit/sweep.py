"""Run many configurations: in priority order, side by side on a GPU, inside a time budget.

Each lane is a thread with its own CUDA stream (and its own GPU, round-robin, where
several are visible). Small nets leave a GPU partly idle, so two or three lanes can
raise total throughput; `labkit.bench` measures whether they do. A job that cannot
finish before the deadline (by the rate measured so far) is skipped, and one that
overruns is stopped at an epoch boundary; both stay out of the store's finished runs.

    python -m labkit sweep --profile full --data-dir DIR --lanes 2 --budget-s 500
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .config import TrainConfig
from .data import Dataset
from .model import build_model, flops_per_image
from .runs import RunStore

__all__ = ["Job", "sweep", "Deadline"]


class Deadline(Exception):
    """The sweep's time budget ran out during a run."""


@dataclass
class Job:
    name: str
    cfg: TrainConfig
    status: str = "pending"  # pending | done | cached | skipped | stopped | failed
    seconds: float = 0.0
    lane: int = -1
    error: str = ""
    work: float = field(default=0.0)  # GFLOP of training this job costs (estimate)


def _work(cfg: TrainConfig, train_images: int, eval_images: int) -> float:
    f = flops_per_image(build_model(cfg)) / 1e9  # training GFLOP per image
    return cfg.epochs * (train_images * f + eval_images * f / 3)


def sweep(
    jobs: list[tuple[str, TrainConfig]],
    store: RunStore,
    data: Callable[[str, int], Dataset],
    lanes: int = 1,
    deadline: float | None = None,
    rate_guess: float | None = None,
    checkpoint_every: int = 1,
    log: Callable[[str], None] | None = print,
) -> list[Job]:
    """Train every job not yet finished in `store`, in order, on `lanes` threads.

    Args:
        data: (split, val_size) -> Dataset, called once per distinct split.
        deadline: time.time() by which every run must have ended (None: no limit).
        rate_guess: GFLOP/s one lane achieves (beside the others), used to skip jobs until a run has measured it.
    """
    on_gpu = torch.cuda.is_available() and all(c.device in ("auto", "cuda") for _, c in jobs)
    lanes = max(1, lanes if on_gpu else 1)
    n_gpus = torch.cuda.device_count() if on_gpu else 0
    todo = [Job(n, c) for n, c in jobs]
    cache: dict[tuple[str, int], Dataset] = {}
    lock = threading.RLock()
    measured: list[tuple[float, float]] = []  # (work, seconds) of finished runs

    def dataset(cfg: TrainConfig) -> Dataset:
        key = (cfg.split, cfg.val_size)
        with lock:
            if key not in cache:
                cache[key] = data(*key)
            return cache[key]

    for j in todo:
        found = store.find(j.cfg, j.name)
        if found is not None and found.finished:
            j.status = "cached"

    def rate() -> float | None:
        if measured:
            return sum(w for w, _ in measured) / sum(s for _, s in measured)
        return rate_guess

    def next_job(lane: int) -> Job | None:
        with lock:
            for j in todo:
                if j.status != "pending":
                    continue
                d = dataset(j.cfg)
                n = min(j.cfg.train_subset or len(d.train_y), len(d.train_y))
                j.work = _work(j.cfg, n, len(d.val_y) + len(d.test_y) // j.cfg.epochs)
                r = rate()
                if deadline is not None and r and time.time() + j.work / r > deadline:
                    j.status = "skipped"
                    if log:
                        log(f"skip {j.name} seed {j.cfg.seed}: needs ~{j.work / r:.0f}s, {deadline - time.time():.0f}s left")
                    continue
                j.status, j.lane = "running", lane
                return j
        return None

    def stop_at_deadline(history: list[dict]) -> None:
        if deadline is not None and time.time() > deadline:
            raise Deadline(f"time budget ran out after epoch {len(history)}")

    def lane_main(lane: int) -> None:
        stream_ctx = None
        if on_gpu:
            torch.cuda.set_device(lane % n_gpus)
            stream_ctx = torch.cuda.stream(torch.cuda.Stream())
            stream_ctx.__enter__()
        try:
            while (j := next_job(lane)) is not None:
                t0 = time.time()
                try:
                    store.get(
                        j.cfg,
                        j.name,
                        dataset(j.cfg),
                        checkpoint_every=checkpoint_every,
                        progress=False,
                        log=None,
                        on_epoch=stop_at_deadline,
                    )
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
                    log(
                        f"[lane {lane}] {j.status:7s} {store.run_id(j.cfg, j.name)} seed {j.cfg.seed}  "
                        f"{j.seconds:6.1f}s" + (f"  test_acc {acc:.4f}" if acc is not None else "") + (f"  {j.error}" if j.error else "")
                    )
        finally:
            if stream_ctx is not None:
                from .train import GPU_GATE

                with GPU_GATE.shared():
                    torch.cuda.current_stream().synchronize()
                stream_ctx.__exit__(None, None, None)

    if lanes == 1:
        lane_main(0)
    else:
        threads = [threading.Thread(target=lane_main, args=(i,), name=f"lane{i}") for i in range(lanes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return todo
