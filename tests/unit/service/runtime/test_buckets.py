"""imgclf.runtime.buckets: preallocated buffers per batch bucket, run through real ONNX Runtime
IOBindings over the tiny model. On this CPU host the buffers live in CPU memory; the same code
allocates them on the GPU for CUDA sessions (CUDA graphs themselves need a GPU to run)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from imgclf.runtime.buckets import GRAPH_ID, NO_GRAPH, BucketRunner, bucket_sizes, plain_run_options
from tests.tiny_model import make_tiny_model

SIZE = 16
CLASSES = 3


@pytest.mark.parametrize(
    ("max_batch", "sizes"),
    [(1, [1]), (2, [1, 2]), (4, [1, 2, 4]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]),
     (9, [1, 2, 4, 8, 9])],
)  # fmt: skip
def test_bucket_sizes_double_up_to_the_max(max_batch, sizes):
    assert bucket_sizes(max_batch) == sizes


def test_bucket_sizes_need_a_positive_max():
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        bucket_sizes(0)


def test_plain_runs_of_a_graph_session_neither_capture_nor_replay():
    assert plain_run_options(False) is None
    options = plain_run_options(True)
    assert options is not None
    assert options.get_run_config_entry(GRAPH_ID) == NO_GRAPH


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def float_session(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    return session(make_tiny_model(tmp_path_factory.mktemp("b") / "model.onnx", size=SIZE))


def plain(sess: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    return sess.run(["logits"], {"input": batch})[0]


def runner(sess: ort.InferenceSession, sizes=(1, 2, 4, 6), graphs=False) -> BucketRunner:
    inp = sess.get_inputs()[0]
    dtype = np.uint8 if inp.type == "tensor(uint8)" else np.float32
    return BucketRunner(sess, tuple(inp.shape[1:]), dtype, CLASSES, list(sizes), "cpu", 0,
                        graphs=graphs)  # fmt: skip


def batch_of(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def test_every_batch_size_runs_in_the_smallest_bucket_that_holds_it(float_session):
    r = runner(float_session)
    assert [r.bucket_for(n) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        r.bucket_for(7)


def test_bucket_runs_equal_plain_runs_and_return_only_the_batch_rows(float_session):
    r = runner(float_session)
    # Largest first: smaller batches later share buckets whose padding rows hold old images.
    for n in (6, 5, 4, 3, 2, 1, 3, 5):
        batch = batch_of(n, seed=n)
        out = r.run(batch)
        assert out.shape == (n, CLASSES)
        np.testing.assert_array_equal(out, plain(float_session, batch))


def test_a_returned_array_is_not_overwritten_by_the_next_batch(float_session):
    r = runner(float_session)
    first = r.run(batch_of(4, seed=1))
    kept = first.copy()
    r.run(batch_of(4, seed=2))
    np.testing.assert_array_equal(first, kept)


def test_concurrent_runs_each_get_their_own_rows(float_session):
    r = runner(float_session)
    batches = [batch_of(1 + i % 6, seed=i) for i in range(40)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outs = list(pool.map(r.run, batches))
    for batch, out in zip(batches, outs, strict=True):
        np.testing.assert_array_equal(out, plain(float_session, batch))


def test_uint8_pixel_models_run_in_buckets(tmp_path):
    sess = session(make_tiny_model(tmp_path / "px.onnx", size=SIZE, pixel_input=True))
    r = runner(sess, sizes=(1, 4))
    pixels = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_array_equal(r.run(pixels), plain(sess, pixels))


def test_prepare_checks_every_bucket_against_a_plain_run(float_session):
    r = runner(float_session)
    seen: list[int] = []

    def plain_run(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return plain(float_session, batch)

    r.prepare(plain_run)
    assert seen == [1, 2, 4, 6]


def test_prepare_refuses_buckets_that_disagree_with_a_plain_run(float_session):
    r = runner(float_session, graphs=True)  # the CPU provider ignores the graph ids
    with pytest.raises(RuntimeError, match=r"batch bucket 1: the CUDA graph's replay differs"):
        r.prepare(lambda batch: plain(float_session, batch) + 1.0)


@pytest.mark.parametrize(("graphs", "ids"), [(True, ["1", "2", "3", "4"]), (False, [NO_GRAPH] * 4)])
def test_each_bucket_has_its_own_graph_id_when_graphs_are_on(float_session, graphs, ids):
    r = runner(float_session, graphs=graphs)
    assert [b.run_options.get_run_config_entry(GRAPH_ID) for b in r._buckets] == ids
