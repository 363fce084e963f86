"""The GPU gate: runs training side by side in threads (a sweep's lanes) capture CUDA graphs
safely. The loop offers it between steps and takes it alone to seed a network and capture
a graph (labkit.train.Hooks), so a capture runs while every other lane waits between steps."""

from __future__ import annotations

import contextlib
import threading

from ..train import Hooks


class GpuGate:
    """Lets runs train side by side in threads yet capture CUDA graphs: a capture fails if another
    thread issues CUDA work meanwhile ("operation not permitted when stream is capturing", H200).
    Every run holds the gate shared and offers it at each step; a capture takes it exclusively."""

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
