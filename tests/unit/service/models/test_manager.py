"""imgclf.models.manager: model lifecycle over real tiny ONNX models in a temporary repository (real
ONNX Runtime on CPU): control modes, version policy, load/unload, hot reload, readiness."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from imgclf.errors import InvalidModelName, ModelControlError, ModelNotFound, ModelNotReady
from imgclf.metrics.prometheus import Metrics
from imgclf.models import manager as manager_module
from imgclf.models.manager import ModelManager
from tests.traversal import layout, traversal_names
from tests.unit.service.support import (
    HANG,
    TINY_SIZE,
    add_version,
    eventually,
    let_run,
    make_repo,
    managing,
    server_settings,
    submit_until_closed,
)

POLL = 0.2
"""Poll interval of the poll-mode tests (seconds)."""


def write_config(repo: Path, name: str, config: dict) -> None:
    (repo / name / "config.json").write_text(json.dumps(config))


def corrupt(repo: Path, name: str, version: int) -> Path:
    """A version whose model.onnx is garbage."""
    path = repo / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00garbage, not an ONNX model\xff" * 8)
    return path


def load_failures(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value("imgclf_model_load_failures_total", {"model": name})
    return value or 0.0


def model_state(metrics: Metrics, name: str, version: int, state: str) -> float | None:
    return metrics.registry.get_sample_value(
        "imgclf_model_state", {"model": name, "version": str(version), "state": state}
    )


def red() -> np.ndarray:
    t = np.zeros((3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    t[0] = 1.0
    return t


def run(coro):
    return asyncio.run(coro)


# --- control mode none ----------------------------------------------------------------------


def test_none_mode_loads_every_model(tmp_path):
    make_repo(tmp_path, name="a")
    make_repo(tmp_path, name="b", version=3)

    async def main() -> None:
        async with managing(tmp_path) as m:
            assert m.names() == ["a", "b"]
            assert m.get("a").version == 1
            assert m.get("b").version == 3
            assert m.all_ready()
            assert m.is_ready("a")
            assert m.is_ready("b", 3)
            assert not m.is_ready("b", 1)
            out = await asyncio.wait_for(m.get("a").batcher.submit(red()), HANG)
            assert int(np.argmax(out)) == 0

    run(main())


def test_none_mode_refuses_load_and_unload(tmp_path):
    make_repo(tmp_path)

    async def main() -> None:
        async with managing(tmp_path) as m:
            with pytest.raises(ModelControlError, match="explicit"):
                await m.load("tiny")
            with pytest.raises(ModelControlError, match="explicit"):
                await m.unload("tiny")
            assert m.names() == ["tiny"]  # nothing changed

    run(main())


def test_none_mode_without_any_loadable_model_fails_to_start(tmp_path):
    corrupt(tmp_path, "broken", 1)
    (tmp_path / "empty").mkdir()

    async def main() -> None:
        with pytest.raises(RuntimeError, match="no model could be loaded"):
            async with managing(tmp_path):
                pass

    run(main())


def test_get_without_a_name(tmp_path):
    make_repo(tmp_path, name="a")

    async def main() -> None:
        async with managing(tmp_path) as m:
            assert m.get("").name == "a"  # the only model
        make_repo(tmp_path, name="b")
        async with managing(tmp_path) as m:
            with pytest.raises(ModelNotFound, match="name a model; loaded models: a, b"):
                m.get("")
        async with managing(tmp_path, default_model="b") as m:
            assert m.get("").name == "b"

    run(main())


def test_get_unknown_model_or_version(tmp_path):
    make_repo(tmp_path)

    async def main() -> None:
        async with managing(tmp_path) as m:
            with pytest.raises(ModelNotFound, match="'nope' is not loaded"):
                m.get("nope")
            with pytest.raises(ModelNotFound, match="no loaded version 2"):
                m.get("tiny", 2)
            assert not m.is_ready("nope")

    run(main())


# --- control mode explicit ------------------------------------------------------------------


def test_explicit_mode_loads_only_the_named_models(tmp_path):
    for name in ("a", "b", "c"):
        make_repo(tmp_path, name=name)
    metrics = Metrics()

    async def main() -> None:
        async with managing(
            tmp_path, load=["b"], metrics=metrics, model_control_mode="explicit"
        ) as m:
            assert m.names() == ["b"]
            assert m.all_ready()  # readiness judges the models that should serve
            assert m.index() == [
                ("a", 0, "UNAVAILABLE", "not loaded"),
                ("b", 1, "READY", ""),
                ("c", 0, "UNAVAILABLE", "not loaded"),
            ]

            await m.load("a")
            assert m.names() == ["a", "b"]
            assert m.get("a").version == 1
            assert model_state(metrics, "a", 1, "READY") == 1

            a = m.get("a")
            await m.unload("a")
            assert m.names() == ["b"]
            with pytest.raises(ModelNotReady):
                m.get("a")  # known, but not serving
            assert m.all_ready()  # an unloaded model is not wanted any more
            assert ("a", 1, "UNAVAILABLE", "unloaded by request") in m.index()
            assert model_state(metrics, "a", 1, "UNAVAILABLE") == 1
            assert model_state(metrics, "a", 1, "READY") == 0
            with pytest.raises(ModelNotReady):  # retired: its batcher is closed
                await asyncio.wait_for(submit_until_closed(a, red()), HANG)

            await m.load("a")  # and back
            assert m.names() == ["a", "b"]

    run(main())


def test_explicit_mode_star_loads_all(tmp_path):
    make_repo(tmp_path, name="a")
    make_repo(tmp_path, name="b")

    async def main() -> None:
        async with managing(tmp_path, load=["*"], model_control_mode="explicit") as m:
            assert m.names() == ["a", "b"]

    run(main())


def test_explicit_mode_with_an_empty_list_loads_nothing(tmp_path):
    make_repo(tmp_path)

    async def main() -> None:
        async with managing(tmp_path, load=[], model_control_mode="explicit") as m:
            assert m.names() == []
            assert m.all_ready()  # nothing is wanted
            assert m.index() == [("tiny", 0, "UNAVAILABLE", "not loaded")]

    run(main())


def test_explicit_server_without_load_model_loads_nothing(tmp_path):
    """--model-control-mode explicit without --load-model: "load only --load-model names at
    start (* for all)" (settings and docs), so nothing is loaded. The server passes
    `settings.load_model or None` to ModelManager.start, and None means "all"."""
    from imgclf.server import Server

    make_repo(tmp_path)
    settings = server_settings(tmp_path, model_control_mode="explicit", grpc_port=0, metrics_port=0)

    async def main() -> list[str]:
        server = Server(settings)
        try:
            await server.start()
            return server.manager.names()
        finally:
            await server.stop()

    assert run(main()) == []


def test_explicit_load_of_unknown_or_unloadable_models(tmp_path):
    make_repo(tmp_path)
    corrupt(tmp_path, "broken", 1)
    metrics = Metrics()

    async def main() -> None:
        async with managing(tmp_path, load=[], metrics=metrics, model_control_mode="explicit") as m:
            with pytest.raises(ModelNotFound, match="no model 'nope'"):
                await m.load("nope")
            with pytest.raises(ModelNotFound, match="not loaded"):
                await m.unload("nope")
            with pytest.raises(ModelControlError, match="'broken' failed to load"):
                await m.load("broken")
            assert m.status["broken"][1].state == "FAILED"
            assert load_failures(metrics, "broken") == 1
            assert not m.all_ready()  # asked for, and not serving
            await m.load("tiny")
            assert m.names() == ["tiny"]

    run(main())


# --- version policy -------------------------------------------------------------------------


def test_latest_two_serves_two_versions(tmp_path):
    for v in (1, 2, 3):
        make_repo(tmp_path, version=v)
    write_config(tmp_path, "tiny", {"version_policy": {"latest": 2}})

    async def main() -> None:
        async with managing(tmp_path) as m:
            assert sorted(m.serving["tiny"]) == [2, 3]
            assert m.get("tiny").version == 3  # the newest
            assert m.get("tiny", 2).version == 2
            assert m.get("tiny", 3) is m.get("tiny")
            with pytest.raises(ModelNotFound, match="no loaded version 1"):
                m.get("tiny", 1)
            assert [row[:3] for row in m.index()] == [("tiny", 2, "READY"), ("tiny", 3, "READY")]

    run(main())


def test_specific_versions(tmp_path):
    for v in (1, 2, 3):
        make_repo(tmp_path, version=v)
    write_config(tmp_path, "tiny", {"version_policy": {"specific": [1, 3]}})

    async def main() -> None:
        async with managing(tmp_path) as m:
            assert sorted(m.serving["tiny"]) == [1, 3]

    run(main())


# --- hot reload -----------------------------------------------------------------------------


def test_corrupt_new_version_keeps_the_old_one_serving_until_fixed(tmp_path):
    make_repo(tmp_path, version=1)
    metrics = Metrics()

    async def main() -> None:
        async with managing(tmp_path, metrics=metrics, model_control_mode="explicit") as m:
            old = m.get("tiny")
            assert old.version == 1
            bad = corrupt(tmp_path, "tiny", 2)

            await m.load("tiny")  # re-sync: version 2 is wanted and fails

            assert m.get("tiny") is old  # still serving
            assert m.all_ready()
            st = m.status["tiny"][2]
            assert st.state == "FAILED"
            assert st.reason  # says why
            assert model_state(metrics, "tiny", 2, "FAILED") == 1
            assert load_failures(metrics, "tiny") == 1
            out = await asyncio.wait_for(m.get("tiny").batcher.submit(red()), HANG)
            assert int(np.argmax(out)) == 0

            await m.load("tiny")  # the same bad bytes are not retried
            assert load_failures(metrics, "tiny") == 1

            add_version(tmp_path, "tiny", 2)  # fixed: a valid model, new mtime
            st_ = bad.stat()
            os.utime(bad, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
            await m.load("tiny")

            assert m.get("tiny").version == 2
            assert m.status["tiny"][2].state == "READY"
            assert m.status["tiny"][1].state == "UNAVAILABLE"  # out of the policy (latest 1)
            assert sorted(m.serving["tiny"]) == [2]
            assert load_failures(metrics, "tiny") == 1
            out = await asyncio.wait_for(m.get("tiny").batcher.submit(red()), HANG)
            assert int(np.argmax(out)) == 0

    run(main())


def test_requests_holding_the_old_version_finish_before_it_closes(tmp_path):
    make_repo(tmp_path, version=1)

    async def main() -> None:
        async with managing(tmp_path, model_control_mode="explicit") as m:
            old = m.get("tiny")
            with old.use():  # a request in flight on version 1
                add_version(tmp_path, "tiny", 2)
                await m.load("tiny")
                assert m.get("tiny").version == 2  # new requests go to version 2 at once
                assert m.status["tiny"][1].state == "UNAVAILABLE"
                await asyncio.sleep(0.05)
                await let_run()
                # Not closed under the request: it still runs on version 1.
                out = await asyncio.wait_for(old.batcher.submit(red()), HANG)
                assert int(np.argmax(out)) == 0
            # Released: version 1 is closed.
            with pytest.raises(ModelNotReady):
                await asyncio.wait_for(submit_until_closed(old, red()), HANG)

    run(main())


def test_changed_model_config_reloads_the_version(tmp_path):
    make_repo(tmp_path)

    async def main() -> None:
        async with managing(tmp_path, model_control_mode="explicit") as m:
            before = m.get("tiny")
            assert before.max_batch_size == 8
            write_config(tmp_path, "tiny", {"max_batch_size": 2})
            await m.load("tiny")
            after = m.get("tiny")
            assert after is not before
            assert after.max_batch_size == 2
            assert m.status["tiny"][1].state == "READY"  # replaced in place, still version 1

    run(main())


# --- control mode poll ----------------------------------------------------------------------


def test_poll_mode_picks_up_a_new_version(tmp_path):
    make_repo(tmp_path, version=1)

    async def main() -> None:
        async with managing(tmp_path, model_control_mode="poll", poll_interval_s=POLL) as m:
            old = m.get("tiny")
            assert old.version == 1
            with pytest.raises(ModelControlError):
                await m.load("tiny")  # no load/unload RPCs in poll mode
            add_version(tmp_path, "tiny", 2)
            await eventually(lambda: m.get("tiny").version == 2)
            assert sorted(m.serving["tiny"]) == [2]
            assert m.status["tiny"][1].state == "UNAVAILABLE"
            out = await asyncio.wait_for(m.get("tiny").batcher.submit(red()), HANG)
            assert int(np.argmax(out)) == 0

    run(main())


def test_poll_mode_picks_up_a_new_model_and_unloads_a_removed_one(tmp_path):
    make_repo(tmp_path, name="a")
    make_repo(tmp_path, name="b")

    async def main() -> None:
        async with managing(tmp_path, model_control_mode="poll", poll_interval_s=POLL) as m:
            assert m.names() == ["a", "b"]
            add_version(tmp_path, "c", 1)
            await eventually(lambda: "c" in m.serving)

            shutil.rmtree(tmp_path / "a")
            await eventually(lambda: "a" not in m.serving)
            assert m.names() == ["b", "c"]
            assert "a" not in m.status  # gone from disk and from service: gone from the index
            assert [row[0] for row in m.index()] == ["b", "c"]
            assert m.all_ready()  # a removed model is not wanted any more
            with pytest.raises(ModelNotFound):
                m.get("a")

    run(main())


def test_poll_mode_counts_an_unchanged_bad_config_once(tmp_path):
    """A bad models/<name>/config.json that nobody touches is one failure, not one per poll
    (versions that fail are not retried until their files change; the same should hold for
    the model's config)."""
    make_repo(tmp_path, name="good")
    make_repo(tmp_path, name="bad")
    write_config(tmp_path, "bad", {"max_batch_sise": 4})
    metrics = Metrics()

    async def main() -> None:
        async with managing(
            tmp_path, metrics=metrics, model_control_mode="poll", poll_interval_s=POLL
        ):
            await asyncio.sleep(POLL * 4)

    run(main())
    assert load_failures(metrics, "bad") == 1


def write_slowly(path: Path, data: bytes, chunks: int, pause: float) -> None:
    """Copy `data` to `path` in `chunks` writes, `pause` seconds apart (a slow copy into a
    repository being polled), then set an older mtime as `cp -p` and shutil.copy2 do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // chunks)
    with path.open("wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            time.sleep(pause)
    os.utime(path, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record (model, version) of every load the manager starts (the real load runs)."""
    calls: list[tuple[str, int]] = []
    real = manager_module.load_model

    def counting(entry, *args):
        calls.append((entry.name, entry.version))
        return real(entry, *args)

    monkeypatch.setattr(manager_module, "load_model", counting)
    return calls


def test_poll_mode_loads_a_slowly_copied_version_once_without_failing(tmp_path, monkeypatch):
    """A version copied in chunks while the poller runs is loaded once it stopped changing:
    never tried half written (no FAILED, no failure counted), loaded once, not again when
    the copy's final mtime lands."""
    make_repo(tmp_path, version=1)
    data = (make_repo(tmp_path / "src", version=2) / "tiny" / "2" / "model.onnx").read_bytes()
    metrics = Metrics()
    loads = count_loads(monkeypatch)
    poll = 0.5  # ten chunk pauses: a stalled writer would have to stall for 0.5 s

    async def main() -> None:
        async with managing(
            tmp_path, metrics=metrics, model_control_mode="poll", poll_interval_s=poll
        ) as m:
            target = tmp_path / "tiny" / "2" / "model.onnx"
            await asyncio.to_thread(write_slowly, target, data, 16, poll / 10)
            await eventually(lambda: m.get("tiny").version == 2)
            await asyncio.sleep(poll * 4)  # a few more passes: nothing more to do
            assert m.status["tiny"][2].state == "READY"
            assert loads.count(("tiny", 2)) == 1, loads
            assert load_failures(metrics, "tiny") == 0
            assert model_state(metrics, "tiny", 2, "FAILED") == 0

    run(main())


def test_a_file_finished_while_its_load_failed_is_tried_again(tmp_path, monkeypatch):
    """The copy finishes while the load of its half-written file fails: the failure is held
    against the half file, not the finished one, so the next pass loads it (before the fix
    the finished file's fingerprint was recorded as failed and it stayed FAILED for good)."""
    make_repo(tmp_path, version=1)
    data = (make_repo(tmp_path / "src", version=2) / "tiny" / "2" / "model.onnx").read_bytes()
    target = tmp_path / "tiny" / "2" / "model.onnx"
    real = manager_module.load_model
    tries: list[int] = []

    def copy_finishes_during_the_load(entry, *args):
        if entry.version == 2:
            tries.append(2)
        try:
            return real(entry, *args)
        except Exception:
            if entry.version == 2 and len(tries) == 1:
                target.write_bytes(data)  # the copier was faster than the failing load
            raise

    monkeypatch.setattr(manager_module, "load_model", copy_finishes_during_the_load)

    async def main() -> None:
        async with managing(tmp_path, model_control_mode="poll", poll_interval_s=POLL) as m:
            target.parent.mkdir()
            target.write_bytes(data[: len(data) // 2])  # half written, and it stays so a while
            await eventually(lambda: 2 in m.status.get("tiny", {}) or bool(tries))
            await eventually(lambda: m.get("tiny").version == 2)
            assert m.status["tiny"][2].state == "READY"
            assert len(tries) == 2

    run(main())


def test_deleting_the_served_version_falls_back_to_the_older_one(tmp_path):
    """rm -r of the version being served (poll mode): it leaves service and the index, and
    the older version on disk serves again (the policy is latest 1)."""
    make_repo(tmp_path, version=1)
    make_repo(tmp_path, version=2)
    metrics = Metrics()

    async def main() -> None:
        async with managing(
            tmp_path, metrics=metrics, model_control_mode="poll", poll_interval_s=POLL
        ) as m:
            assert m.get("tiny").version == 2
            shutil.rmtree(tmp_path / "tiny" / "2")
            await eventually(lambda: m.get("tiny").version == 1)
            await eventually(lambda: 2 not in m.status["tiny"])
            assert sorted(m.serving["tiny"]) == [1]
            assert [row[:3] for row in m.index()] == [("tiny", 1, "READY")]
            assert all(model_state(metrics, "tiny", 2, s) is None for s in manager_module.STATES)
            out = await asyncio.wait_for(m.get("tiny").batcher.submit(red()), HANG)
            assert int(np.argmax(out)) == 0

    run(main())


def test_deleting_the_only_served_version_takes_the_model_out_of_service(tmp_path):
    """No older version to fall back to (or it fails): the deleted version leaves service
    anyway; it does not keep serving from memory."""
    make_repo(tmp_path, version=2)
    corrupt(tmp_path, "tiny", 1)

    async def main() -> None:
        async with managing(tmp_path, model_control_mode="poll", poll_interval_s=POLL) as m:
            assert m.get("tiny").version == 2
            shutil.rmtree(tmp_path / "tiny" / "2")
            await eventually(lambda: "tiny" not in m.serving)
            await eventually(lambda: m.status["tiny"].keys() == {1})
            assert m.status["tiny"][1].state == "FAILED"
            with pytest.raises(ModelNotReady):
                m.get("tiny")
            assert not m.all_ready()

    run(main())


def test_a_failed_version_whose_folder_is_deleted_leaves_index_and_metric(tmp_path):
    make_repo(tmp_path, version=1)
    corrupt(tmp_path, "tiny", 2)
    corrupt(tmp_path, "broken", 1)  # a model with nothing but a failed version
    metrics = Metrics()

    async def main() -> None:
        async with managing(
            tmp_path, metrics=metrics, model_control_mode="poll", poll_interval_s=POLL
        ) as m:
            assert m.status["tiny"][2].state == "FAILED"
            assert m.status["broken"][1].state == "FAILED"
            assert model_state(metrics, "tiny", 2, "FAILED") == 1
            shutil.rmtree(tmp_path / "tiny" / "2")
            shutil.rmtree(tmp_path / "broken")
            await eventually(lambda: 2 not in m.status["tiny"] and "broken" not in m.status)
            assert [row[:3] for row in m.index()] == [("tiny", 1, "READY")]
            for name, version in (("tiny", 2), ("broken", 1)):
                for state in manager_module.STATES:
                    assert model_state(metrics, name, version, state) is None
            assert m.get("tiny").version == 1

    run(main())


# --- names: no door leads out of the repository ----------------------------------------------


def test_no_door_loads_a_model_outside_the_repository(tmp_path, monkeypatch):
    """RPC load and unload, the start-up list and polling all refuse every traversal name
    (tests/traversal.py); the outside model never loads or shows in the index."""
    repo, _ = layout(tmp_path)
    names = traversal_names(tmp_path)
    loads = count_loads(monkeypatch)

    async def main() -> None:
        async with managing(repo, load=["tiny", *names], model_control_mode="explicit") as m:
            for name in names:
                with pytest.raises((InvalidModelName, ModelNotFound)):
                    await m.load(name)
                with pytest.raises((InvalidModelName, ModelNotFound)):
                    await m.unload(name)
            assert m.names() == ["tiny"]
            assert [row[0] for row in m.index()] == ["tiny"]
        async with managing(repo, model_control_mode="poll", poll_interval_s=POLL) as m:
            await asyncio.sleep(POLL * 3)
            assert m.names() == ["tiny"]
            assert [row[0] for row in m.index()] == ["tiny"]

    run(main())
    assert loads and all(name == "tiny" for name, _ in loads), loads


# --- isolation of failures and readiness ----------------------------------------------------


def test_a_bad_model_config_fails_only_that_model(tmp_path):
    make_repo(tmp_path, name="good")
    make_repo(tmp_path, name="bad")
    write_config(tmp_path, "bad", {"max_batch_sise": 4})
    metrics = Metrics()

    async def main() -> None:
        async with managing(tmp_path, metrics=metrics) as m:
            assert m.names() == ["good"]
            st = m.status["bad"][1]
            assert st.state == "FAILED"
            assert "config.json" in st.reason
            assert load_failures(metrics, "bad") == 1
            assert load_failures(metrics, "good") == 0
            with pytest.raises(ModelNotReady):
                m.get("bad")
            assert m.is_ready("good")
            assert not m.all_ready()  # "bad" should serve and does not
            assert m.index() == [("bad", 1, "FAILED", st.reason), ("good", 1, "READY", "")]

    run(main())


def test_a_corrupt_model_fails_only_that_model(tmp_path):
    make_repo(tmp_path, name="good")
    corrupt(tmp_path, "broken", 1)
    metrics = Metrics()

    async def main() -> None:
        async with managing(tmp_path, metrics=metrics) as m:
            assert m.names() == ["good"]
            assert m.status["broken"][1].state == "FAILED"
            assert load_failures(metrics, "broken") == 1
            assert not m.all_ready()

    run(main())


def test_close_retires_every_version(tmp_path):
    make_repo(tmp_path)
    metrics = Metrics()

    async def main() -> None:
        m = ModelManager(server_settings(tmp_path), metrics)
        await m.start()
        model = m.get("tiny")
        await m.close()
        assert m.names() == []
        assert m.status["tiny"][1].state == "UNAVAILABLE"
        with pytest.raises(ModelNotReady):
            await model.batcher.submit(red())

    run(main())
