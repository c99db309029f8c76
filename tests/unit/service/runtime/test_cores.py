"""imgclf.runtime.cores: the process-wide gate between solo runs and every other CPU work."""

from __future__ import annotations

import threading

from imgclf.runtime.cores import Cores
from tests.unit.service.support import HANG


def test_solo_only_when_nothing_else_works():
    cores = Cores()
    cores.note(+1)  # an image being decoded
    assert not cores.try_solo()
    cores.note(-1)
    assert cores.try_solo()
    assert not cores.try_solo()  # one solo run at a time
    cores.end_solo()
    cores.begin_batch()  # a batch running on one core
    assert cores.working == 1 and not cores.try_solo()
    cores.note(-1)
    assert cores.working == 0 and cores.try_solo()


def test_a_batch_waits_for_the_solo_run_to_end():
    cores = Cores()
    assert cores.try_solo()
    started = threading.Event()

    def batch() -> None:
        cores.begin_batch()
        started.set()

    worker = threading.Thread(target=batch)
    worker.start()
    assert not started.wait(0.2)  # held while the solo run has every core
    cores.end_solo()
    assert started.wait(HANG)
    worker.join(HANG)
    assert cores.working == 1
