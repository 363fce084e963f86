"""labkit.sweep and the GPU gate that lets runs share a GPU from threads (logic, on the CPU)."""

from __future__ import annotations

import threading
import time

from labkit.config import preset
from labkit.runs import RunStore
from labkit.sweep import sweep
from labkit.train import _GpuGate


def test_gate_capture_runs_alone():
    gate = _GpuGate()
    inside = []  # threads currently "issuing GPU work"
    overlaps = []
    stop = threading.Event()

    def runner(i):
        with gate.shared():
            for _ in range(200):
                if stop.is_set():
                    break
                gate.pause_point()
                inside.append(i)
                time.sleep(0.0005)
                inside.remove(i)

    def capturer():
        with gate.shared():
            time.sleep(0.01)
            with gate.exclusive():
                overlaps.append(list(inside))
                time.sleep(0.01)
                overlaps.append(list(inside))

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(3)] + [threading.Thread(target=capturer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "gate deadlocked"
    assert overlaps == [[], []]


def test_gate_two_capturers_do_not_deadlock():
    gate = _GpuGate()
    order = []

    def cap(i):
        with gate.shared():
            with gate.exclusive():
                order.append(i)
                time.sleep(0.01)

    threads = [threading.Thread(target=cap, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(order) == [0, 1, 2, 3]


def test_sweep_trains_in_order_then_caches(tmp_path, tiny_data):
    store = RunStore(tmp_path / "runs")
    base = preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=64, epochs=1, seed_extra_block=False)
    jobs = [("a", base), ("b", base.replace(lr=2e-3))]
    done = sweep(jobs, store, lambda split, val: tiny_data, log=None)
    assert [j.status for j in done] == ["done", "done"]
    again = sweep(jobs, store, lambda split, val: tiny_data, log=None)
    assert [j.status for j in again] == ["cached", "cached"]


def test_sweep_skips_what_cannot_finish_by_the_deadline(tmp_path, tiny_data):
    store = RunStore(tmp_path / "runs")
    cfg = preset("seed", width=8, lays=(1, 1, 1, 1), batch_size=64, epochs=50, seed_extra_block=False)
    done = sweep([("slow", cfg)], store, lambda split, val: tiny_data, deadline=time.time() + 5, rate_guess=0.01, log=None)
    assert done[0].status == "skipped"
    assert store.find(cfg, "slow") is None or not store.find(cfg, "slow").finished
