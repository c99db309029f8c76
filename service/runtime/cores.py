"""The CPU work of the whole server process, shared by every CPU model's batcher, and the
solo/cores policy behind the one small interface a model's workers call (`CoreGate`).

A model's solo session (an instance whose intra-op threads span every core) takes every core;
it may start only when the batch is all the work there is for the model and nothing else in
the process is at work on the CPU: no batch of any model running and no image being decoded.
While it runs, every other batch waits, so the cores are never oversubscribed. Decoding is
only counted (the event loop must never block on it). On CPU this gives a lone request the
latency of all cores and concurrent requests the throughput of one single-threaded instance
per core (docs/performance.md has the measurements).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")
"""A runner: what runs a batch (imgclf.runtime.workers.RunBatch)."""


class Cores:
    """The CPU work of the whole process, shared by every CPU model's batcher: batches
    running and images being decoded, and whether a solo run (every core) is on. A solo run
    starts only when nothing else is at work; other batches wait for it to end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._solo_done = threading.Condition(self._lock)
        self._working = 0
        self._solo = False

    @property
    def working(self) -> int:
        return self._working

    def try_solo(self) -> bool:
        """Take every core if nothing else is at work (returns whether it did)."""
        with self._lock:
            if self._working or self._solo:
                return False
            self._solo = True
            return True

    def end_solo(self) -> None:
        with self._lock:
            self._solo = False
            self._solo_done.notify_all()

    def begin_batch(self) -> None:
        """A batch is about to run on one core: wait while a solo run holds them all."""
        with self._lock:
            while self._solo:
                self._solo_done.wait()
            self._working += 1

    def note(self, delta: int) -> None:
        """Count work that must not wait (decoding, +1 then -1): it only keeps solo runs off."""
        with self._lock:
            self._working += delta


@dataclass(frozen=True)
class Lease(Generic[R]):
    """The cores a batch runs on: `run` is the runner to use, `solo` whether it holds them
    all (the model's solo session) rather than one."""

    run: R
    solo: bool


class CoreGate(Generic[R]):
    """One model's way onto the process's cores: what its workers call, so that they need
    not know whether the model has a solo session or shares the cores with other models.
    A GPU model gets a gate of its own `Cores` (its batches leave the CPU's be)."""

    def __init__(self, cores: Cores | None = None, solo: R | None = None) -> None:
        self.cores = cores if cores is not None else Cores()
        self._solo = solo

    @contextlib.contextmanager
    def making_inputs(self) -> Iterator[None]:
        """Count the work of making a batch's inputs (decoding): no solo run meanwhile."""
        self.cores.note(+1)
        try:
            yield
        finally:
            self.cores.note(-1)

    @contextlib.contextmanager
    def running(self, run: R, alone: Callable[[], bool]) -> Iterator[Lease[R]]:
        """The cores for one batch, freed on exit: every core and the solo session when the
        batch is all the work there is (`alone()`) and nothing else in the process works,
        else one core for `run` (waiting while a solo run holds them all)."""
        if self._solo is not None and alone() and self.cores.try_solo():
            try:
                yield Lease(self._solo, True)
            finally:
                self.cores.end_solo()
            return
        self.cores.begin_batch()
        try:
            yield Lease(run, False)
        finally:
            self.cores.note(-1)
