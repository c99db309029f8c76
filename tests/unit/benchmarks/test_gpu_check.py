"""benchmarks.gpu_check's readers: the load log line, the batch-size histogram deltas and the
per-thread CPU time of a process."""

from __future__ import annotations

import os
import threading
import time

from benchmarks import gpu_check
from imgclf.runtime.osthreads import name_this_thread


def test_load_lines_read_the_provider_and_reason_of_each_model() -> None:
    log = (
        "2026-12-06 INFO imgclf.models.loader: model digits version 1 loaded in 0.41s: 10 classes, "
        "input 32x32, max batch 8, 1 instance(s) x 16 intra-op thread(s) on "
        "CUDAExecutionProvider (CUDA available (device 0)); IO binding, batch buckets 1,2,4,8 "
        "(CUDA graphs)\n"
        "2026-12-06 INFO other line\n"
    )
    line, provider, reason = gpu_check.load_lines(log)["digits"]
    assert provider == "CUDAExecutionProvider"
    assert reason == "CUDA available (device 0)"
    assert line.startswith("2026-12-06 INFO imgclf.models.loader: model digits")


def test_load_lines_read_the_line_with_its_precision_and_memory_parts() -> None:
    """The line as the loader prints it since it names the precision and the memory taken."""
    log = (
        "2026-12-06 INFO imgclf.models.loader: model e version 1 loaded in 1.15s: 1000 "
        "classes, input 224x224, max batch 4, 2 instance(s) x 1 intra-op thread(s), precision "
        "fp32 (model.onnx: the only variant (model.onnx)) on CPUExecutionProvider (CPU "
        "fallback: no CUDA driver (libcuda) on this host); 110.9 MB resident, weights 18.5 MB "
        "shared by 3 sessions\n"
    )
    _line, provider, reason = gpu_check.load_lines(log)["e"]
    assert provider == "CPUExecutionProvider"
    assert reason == "CPU fallback: no CUDA driver (libcuda) on this host"


def bucket(model: str, le: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("imgclf_batch_size_bucket", (("le", le), ("model", model), ("version", "1")))


def test_batch_histogram_counts_the_batches_formed_between_two_scrapes() -> None:
    before = {bucket("m", "1.0"): 5.0, bucket("m", "8.0"): 5.0, bucket("m", "+Inf"): 5.0}
    # since then: 2 batches of 1, 3 batches of 2..8; another model's batches do not count
    after = {bucket("m", "1.0"): 7.0, bucket("m", "8.0"): 10.0, bucket("m", "+Inf"): 10.0,
             bucket("other", "1.0"): 99.0}  # fmt: skip
    assert gpu_check.batch_histogram(before, after, "m") == {"<=1": 2.0, "<=8": 3.0}


def test_sampler_counts_busy_cores_per_thread_group_by_os_thread_name() -> None:
    spun, done = threading.Event(), threading.Event()

    def spin() -> None:  # a live thread, as the server's are (an ended one leaves /proc)
        name_this_thread("preprocess_0")
        end = time.thread_time() + 0.3
        while time.thread_time() < end:  # 0.3 s of this thread's own CPU
            pass
        spun.set()
        done.wait(30)

    sampler = gpu_check.Sampler(os.getpid(), gpu=False)
    thread = threading.Thread(target=spin)
    try:
        with sampler.sampling(loaded_s=60.0) as got:
            thread.start()
            assert spun.wait(30)
    finally:
        done.set()
        thread.join()
    busy = got["busy_cores"]
    assert busy["decode"] > 0  # the spinning thread, found by its OS name
    assert "event_loop" in busy  # the main thread (tid == pid)
    assert got["gpu_utilization_mean"] is None  # no GPU sampled
