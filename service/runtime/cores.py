"""The CPU work of the whole server process, shared by every CPU model's batcher.

A model's solo session (see imgclf.runtime.batcher) takes every core; it may start only when
nothing else in the process is at work on the CPU: no batch of any model running and no image
being decoded. While it runs, every other batch waits. Decoding is only counted (the event
loop must never block on it).
"""

from __future__ import annotations

import threading


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
