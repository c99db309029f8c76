"""imgclf.runtime.cores: the process-wide gate between solo runs and every other CPU work, and
the per-model CoreGate its workers call."""

from __future__ import annotations

import contextlib
import threading

from imgclf.runtime.cores import CoreGate, Cores
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


# --- CoreGate: what a model's workers call ----------------------------------------------------


def test_the_gate_runs_solo_only_when_alone_and_the_cores_are_free():
    cores = Cores()
    gate = CoreGate(cores, solo="solo")
    with gate.running("instance", alone=lambda: True) as lease:
        assert (lease.run, lease.solo) == ("solo", True)
        assert not cores.try_solo()  # held
    with gate.running("instance", alone=lambda: False) as lease:
        assert (lease.run, lease.solo) == ("instance", False)
        assert cores.working == 1
    cores.note(+1)  # another model's batch, or a decode
    with gate.running("instance", alone=lambda: True) as lease:
        assert not lease.solo
    cores.note(-1)
    assert cores.working == 0 and cores.try_solo()  # every lease was given back


def test_a_gate_without_a_solo_session_never_asks_and_counts_decoding():
    asked = []
    gate = CoreGate()
    with gate.running("instance", alone=lambda: asked.append(1) or True) as lease:
        assert not lease.solo
    assert asked == []
    with gate.making_inputs():
        assert gate.cores.working == 1
    assert gate.cores.working == 0


def test_the_gate_gives_the_cores_back_when_the_batch_raises():
    gate = CoreGate(solo="solo")
    with contextlib.suppress(RuntimeError), gate.running("instance", alone=lambda: True):
        raise RuntimeError("engine failed")
    assert gate.cores.working == 0 and gate.cores.try_solo()
