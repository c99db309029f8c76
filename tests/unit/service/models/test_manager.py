"""imgclf.models.manager: model lifecycle over real tiny ONNX models in a temporary repository (real
ONNX Runtime on CPU): control modes, version policy, load/unload, hot reload, readiness."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgclf.errors import ModelControlError, ModelNotFound, ModelNotReady
from imgclf.metrics.prometheus import Metrics
from imgclf.models.manager import ModelManager
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
            assert m.status["a"][1].state == "UNAVAILABLE"
            assert m.all_ready()  # a removed model is not wanted any more
            with pytest.raises((ModelNotFound, ModelNotReady)):
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
