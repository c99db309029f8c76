"""imgclf.client.bench: the arithmetic of the benchmark (percentiles, merging, windows, schedules,
metric deltas, rounds) and the requests it builds; no server, no timing."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from PIL import Image

from imgclf.client.bench import cli, limit, report, scrape, stats, wire
from imgclf.client.bench.inputs import fit, parse_size
from imgclf.client.bench.stats import Records, arrival_times, merge, percentile, summarise

UNAVAILABLE = 14
DEADLINE = 4


# percentiles -----------------------------------------------------------------------------


def test_percentile_is_nearest_rank():
    values = list(range(100, 0, -1))  # 1..100, unsorted
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 99.5) == 100
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1


def test_percentile_of_few_values():
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.0
    assert percentile([1.0, 2.0], 51) == 2.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


# records, merging, windows -----------------------------------------------------------------


def rec(scheduled, end, code=None, sent=None, cpu=0.0):
    code = code or [0] * len(scheduled)
    return Records.from_lists(scheduled, sent or scheduled, end, code, cpu)


def test_merge_orders_by_scheduled_time_and_adds_cpu():
    a = rec([1.0, 3.0], [1.5, 3.5], [0, UNAVAILABLE], cpu=0.5)
    b = rec([2.0, 4.0], [2.5, 4.2], cpu=0.25)
    m = merge([a, b])
    assert m.scheduled.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert m.end.tolist() == [1.5, 2.5, 3.5, 4.2]
    assert m.code.tolist() == [0, 0, UNAVAILABLE, 0]
    assert m.cpu_s == 0.75
    assert len(merge([])) == 0


def test_summarise_counts_completions_in_the_window_and_latency_of_requests_started_in_it():
    r = rec(
        scheduled=[9.5, 10.0, 11.0, 12.0, 13.0, 19.9, 20.5],
        end=[10.5, 10.1, 11.2, 12.5, 13.0, 20.3, 20.6],
        code=[0, 0, 0, UNAVAILABLE, DEADLINE, 0, 0],
        cpu=2.0,
    )
    s = summarise(r, 10.0, 20.0, images_per_request=4)
    # completed OK inside [10, 20): 10.5 (started in warm-up), 10.1, 11.2 -> 3 in 10 s
    assert s.throughput_rps == pytest.approx(0.3)
    assert s.throughput_ips == pytest.approx(1.2)
    # scheduled inside [10, 20): 10, 11, 12, 13, 19.9
    assert s.requests == 5 and s.ok == 3
    assert s.errors == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 1}
    # latencies of the OK ones scheduled inside: 100 ms, 200 ms, 400 ms
    assert s.latency_ms["p50"] == pytest.approx(200)
    assert s.latency_ms["p99"] == pytest.approx(400)
    assert s.latency_ms["max"] == pytest.approx(400)
    assert s.client_cpu_cores == pytest.approx(0.2)


def test_open_loop_latency_runs_from_the_scheduled_time_not_the_send():
    r = Records.from_lists([10.0], [10.3], [10.4], [0])  # sent 300 ms late
    s = summarise(r, 10.0, 11.0)
    assert s.latency_ms["p50"] == pytest.approx(400)
    assert s.send_lag_p99_ms == pytest.approx(300)


def test_summarise_of_nothing_and_of_an_empty_window():
    s = summarise(Records(), 0.0, 1.0)
    assert s.throughput_rps == 0 and math.isnan(s.latency_ms["p50"]) and s.errors == {}
    with pytest.raises(ValueError):
        summarise(Records(), 1.0, 1.0)


def test_client_errors_and_unknown_codes_have_names():
    assert stats.code_name(stats.CLIENT_ERROR) == "CLIENT_ERROR"
    assert stats.code_name(UNAVAILABLE) == "UNAVAILABLE"
    assert stats.code_name(99) == "CODE_99"


def test_split_evenly():
    assert stats.split_evenly(16, 3) == [6, 5, 5]
    assert stats.split_evenly(1, 2) == [1, 0]
    assert sum(stats.split_evenly(7, 4)) == 7


# open-loop schedules -------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_constant_arrivals_of_all_processes_are_one_every_1_over_rate(processes):
    parts = [arrival_times(100.0, 5.0, 7.0, i, processes) for i in range(processes)]
    union = np.sort(np.concatenate(parts))
    assert union.size == 200
    np.testing.assert_allclose(union, 5.0 + np.arange(200) / 100.0)
    assert sum(p.size for p in parts) == np.unique(union).size  # disjoint


def test_constant_arrivals_stay_inside_the_span():
    t = arrival_times(3.0, 0.0, 1.0)
    assert t.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert arrival_times(10.0, 2.0, 2.0).size == 0


def test_poisson_arrivals_have_the_rate_and_are_reproducible():
    a = arrival_times(200.0, 0.0, 100.0, 0, 2, "poisson", seed=1)
    b = arrival_times(200.0, 0.0, 100.0, 1, 2, "poisson", seed=1)
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 100
    assert (a.size + b.size) / 100.0 == pytest.approx(200, rel=0.05)
    np.testing.assert_array_equal(a, arrival_times(200.0, 0.0, 100.0, 0, 2, "poisson", seed=1))
    assert not np.array_equal(a[:10], b[:10])
    gaps = np.diff(a)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.1)  # exponential: cv = 1


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError):
        arrival_times(0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        arrival_times(1.0, 0.0, 1.0, 2, 2)
    with pytest.raises(ValueError):
        arrival_times(1.0, 0.0, 1.0, kind="bursty")


# /metrics deltas ------------------------------------------------------------------------------


def exposition(n: int, cpu: float) -> str:
    """imgclf-shaped metrics after n batches of 2 images (4 ms queue, 10 ms run each)."""
    lines = [f"process_cpu_seconds_total {cpu}"]
    for version, share in (("1", 1), ("2", 1)):  # two versions: summed
        m = f'model="m",version="{version}"'
        k = n * share
        lines += [
            f"imgclf_queue_duration_seconds_sum{{{m}}} {0.004 * 2 * k}",
            f"imgclf_queue_duration_seconds_count{{{m}}} {2 * k}",
            f"imgclf_inference_duration_seconds_sum{{{m}}} {0.010 * k}",
            f"imgclf_inference_duration_seconds_count{{{m}}} {k}",
            f"imgclf_batch_size_sum{{{m}}} {2 * k}",
            f"imgclf_batch_size_count{{{m}}} {k}",
            f"imgclf_request_duration_seconds_sum{{{m}}} {0.020 * 2 * k}",
            f"imgclf_request_duration_seconds_count{{{m}}} {2 * k}",
            f'imgclf_requests_total{{code="OK",{m}}} {2 * k}',
            f'imgclf_requests_total{{code="UNAVAILABLE",{m}}} 3',
            f"imgclf_images_total{{{m}}} {2 * k}",
        ]
    other = 'model="other",version="1"'
    lines += [
        f"imgclf_inference_duration_seconds_sum{{{other}}} {100.0 * n}",
        f"imgclf_inference_duration_seconds_count{{{other}}} {n}",
    ]
    types = [
        "# TYPE imgclf_queue_duration_seconds histogram",
        "# TYPE imgclf_inference_duration_seconds histogram",
        "# TYPE imgclf_batch_size histogram",
        "# TYPE imgclf_request_duration_seconds histogram",
        "# TYPE imgclf_requests_total counter",
        "# TYPE imgclf_images_total counter",
        "# TYPE process_cpu_seconds_total counter",
    ]
    return "\n".join(types + lines) + "\n"


def test_breakdown_is_the_delta_of_sums_over_counts_for_the_model():
    before, after = scrape.parse(exposition(10, 5.0)), scrape.parse(exposition(60, 8.0))
    b = scrape.breakdown(before, after, "m", wall_s=2.0)
    assert b["queue_ms_per_image"] == pytest.approx(4.0)
    assert b["inference_ms_per_batch"] == pytest.approx(10.0)
    assert b["inference_ms_per_image"] == pytest.approx(5.0)
    assert b["request_ms_per_request"] == pytest.approx(20.0)
    assert b["mean_batch_size"] == pytest.approx(2.0)
    assert b["batches"] == 100 and b["images"] == 200
    assert b["requests_by_code"] == {"OK": 200}  # UNAVAILABLE did not change
    assert b["server_cpu_cores"] == pytest.approx(1.5)
    assert b["preprocess_ms_per_image"] is None  # not observed (tensor input)


def test_parse_sums_and_groups_by_label():
    s = scrape.parse(exposition(1, 0.0))
    assert scrape.total(s, "imgclf_batch_size_count", model="m") == 2
    assert scrape.by_label(s, "imgclf_requests_total", "code", model="m") == {
        "OK": 4.0, "UNAVAILABLE": 6.0,
    }  # fmt: skip


def test_a_server_without_imgclf_metrics_gives_no_breakdown():
    triton = scrape.parse("# TYPE nv_inference_count counter\nnv_inference_count 5\n")
    assert scrape.breakdown(triton, triton, "m", 1.0) == {}


# rounds --------------------------------------------------------------------------------------


def point(ips, p50, ratio, errors=None):
    return {
        "load": "c=1",
        "summary": {
            "throughput_rps": ips, "throughput_ips": ips, "send_lag_p99_ms": 0.0,
            "client_cpu_cores": 0.1, "requests": 10, "ok": 10,
            "latency_ms": {"p50": p50, "p90": p50, "p99": p50, "mean": p50, "max": p50},
            "errors": errors or {},
        },
        "server": {"mean_batch_size": ips},
        "vs_limit": {"served_over_limit": ratio, "p50_minus_limit_p50_ms": None},
    }  # fmt: skip


def test_rounds_combine_to_medians_with_errors_summed():
    c = stats.combine_points([point(100, 5, 0.9, {"UNAVAILABLE": 1}), point(300, 9, 0.7),
                              point(200, 7, 0.8, {"UNAVAILABLE": 2})])  # fmt: skip
    assert c["summary"]["throughput_ips"] == 200
    assert c["summary"]["latency_ms"]["p50"] == 7
    assert c["summary"]["errors"] == {"UNAVAILABLE": 3}
    assert c["summary"]["requests"] == 30
    assert c["vs_limit"] == {"served_over_limit": 0.8, "p50_minus_limit_p50_ms": None}
    assert c["server"] == {"mean_batch_size": 200}  # the median round's
    assert [r["throughput_ips"] for r in c["rounds"]] == [100, 300, 200]
    assert stats.combine_points([point(1, 1, 1)]) == point(1, 1, 1)


def test_limit_rounds_and_vs_limit():
    rows = [
        {"config": "a/1", "batch": 1, "processes": 2, "images_per_s": 300.0,
         "call_latency_ms": {"p50": 9.0}},
        {"config": "b/1", "batch": 1, "processes": 1, "images_per_s": 200.0,
         "call_latency_ms": {"p50": 6.0}},
        {"config": "b/4", "batch": 4, "processes": 1, "images_per_s": 250.0,
         "call_latency_ms": {"p50": 2.0}},
    ]  # fmt: skip
    lim = limit.summarise_limit(rows, 2, "m.onnx")
    assert (lim["images_per_s"], lim["best_config"]) == (300.0, "a/1")
    assert (lim["p50_ms"], lim["p50_config"]) == (6.0, "b/1")  # one image, one process
    both = limit.combine_limits([lim, {**lim, "images_per_s": 200.0, "p50_ms": 8.0}])
    assert both["images_per_s"] == 250.0 and both["p50_ms"] == 7.0 and len(both["rounds"]) == 2
    served = {"throughput_ips": 270.0, "latency_ms": {"p50": 7.5}}
    v = report.vs_limit(served, lim)
    assert v["served_over_limit"] == pytest.approx(0.9)
    assert v["p50_minus_limit_p50_ms"] == pytest.approx(1.5)
    assert v["per_cpu_over_limit"] is None  # no server CPU known
    assert report.vs_limit(served, None, {"server_cpu_cores": 1.5}) == {
        "served_over_limit": None, "p50_minus_limit_p50_ms": None,
        "images_per_server_cpu_s": 180.0, "per_cpu_over_limit": None,
    }  # fmt: skip


def test_per_cpu_comparison_factors_out_cores_lost_to_other_work():
    rows = [
        {"config": "a/1", "batch": 1, "processes": 2, "images_per_s": 100.0,
         "images_per_cpu_s": 60.0, "call_latency_ms": {"p50": 9.0}},
        {"config": "b/1", "batch": 1, "processes": 1, "images_per_s": 110.0,
         "images_per_cpu_s": 50.0, "call_latency_ms": {"p50": 6.0}},
    ]  # fmt: skip
    lim = limit.summarise_limit(rows, 2, "m.onnx")
    assert (lim["images_per_cpu_s"], lim["best_cpu_config"]) == (60.0, "a/1")
    # the server got only 0.9 of a core: 45 img/s is 50 img per CPU-second
    v = report.vs_limit({"throughput_ips": 45.0, "latency_ms": {"p50": 7.0}}, lim,
                        {"server_cpu_cores": 0.9})  # fmt: skip
    assert v["images_per_server_cpu_s"] == pytest.approx(50.0)
    assert v["per_cpu_over_limit"] == pytest.approx(50.0 / 60.0)


def test_limit_configs():
    names = [c.name for c in limit.limit_configs(2, [1, 4])]
    assert names == ["a/1", "b/1", "b+spin/1", "a/4", "b/4", "b+spin/4"]
    a = limit.limit_configs(4, [1])[0]
    assert (a.processes, a.threads, a.spinning) == (4, 1, False)
    assert [c.name for c in limit.limit_configs(1, [1])] == ["b/1", "b+spin/1"]


# inputs and requests --------------------------------------------------------------------------


def test_sizes():
    assert parse_size("0.3mp") == (640, 480)
    assert parse_size("12MP") == (4000, 3000)
    assert parse_size("800x600") == (800, 600)
    assert parse_size("native") is None
    with pytest.raises(ValueError):
        parse_size("huge")


@pytest.mark.parametrize("src", [(451, 300), (300, 451), (640, 480)])
def test_fit_crops_to_the_aspect_then_resizes(src):
    img = Image.new("RGB", src)
    assert fit(img, (640, 480)).size == (640, 480)


def test_imgclf_payloads_carry_batches_of_consecutive_images():
    from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb

    method, payloads = wire.build_payloads("imgclf", "m", [b"a", b"b", b"c"], 2, top_k=3)
    assert method == wire.CLASSIFY and len(payloads) == 3
    req = pb.ClassifyRequest.FromString(payloads[2])
    assert (req.model, req.top_k) == ("m", 3)
    assert [i.encoded for i in req.images] == [b"c", b"a"]
    tensor = np.ones((3, 4, 4), np.float32)
    _, (p,) = wire.build_payloads("imgclf", "m", [tensor], 1)
    t = pb.ClassifyRequest.FromString(p).images[0].tensor
    assert list(t.shape) == [3, 4, 4] and len(t.data) == tensor.nbytes


def test_oip_payloads_are_what_the_server_parses():
    from imgclf._generated.inference import grpc_service_pb2 as oip
    from imgclf.grpc.oip_tensors import parse_bytes_elements

    method, payloads = wire.build_payloads(
        "oip", "m", [b"jpeg1", b"jpeg-2"], 2, output_name="probabilities"
    )
    req = oip.ModelInferRequest.FromString(payloads[0])
    assert method == wire.MODEL_INFER and req.model_name == "m"
    (inp,) = req.inputs
    assert (inp.name, inp.datatype, list(inp.shape)) == ("image", "BYTES", [2, 1])
    assert parse_bytes_elements(req.raw_input_contents[0]) == [b"jpeg1", b"jpeg-2"]
    assert [o.name for o in req.outputs] == ["probabilities"]
    arr = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    _, payloads = wire.build_payloads("oip", "m", list(arr), 2, input_name="x", output_name="")
    req = oip.ModelInferRequest.FromString(payloads[0])
    assert (req.inputs[0].name, req.inputs[0].datatype) == ("x", "FP32")
    assert list(req.inputs[0].shape) == [2, 3, 2, 2] and not req.outputs
    np.testing.assert_array_equal(np.frombuffer(req.raw_input_contents[0], "<f4"), arr.ravel())


def test_check_reply():
    from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
    from imgclf._generated.inference import grpc_service_pb2 as oip

    ok = pb.ClassifyResponse(results=[pb.Classification()] * 2).SerializeToString()
    assert wire.check_reply("imgclf", ok, 2) is None
    one = pb.ClassifyResponse(results=[pb.Classification()]).SerializeToString()
    assert wire.check_reply("imgclf", one, 2) == "1 results for 2 images"
    out = oip.ModelInferResponse.InferOutputTensor(name="logits", shape=[2, 10])
    reply = oip.ModelInferResponse(outputs=[out]).SerializeToString()
    assert wire.check_reply("oip", reply, 2) is None
    assert "shape [2, 10]" in wire.check_reply("oip", reply, 3)
    assert wire.check_reply("oip", b"", 1) == "no outputs"


def test_cli_defaults():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.api, args.input, args.image_size, args.model) == (
        "imgclf", "jpeg", "0.3mp", "efficientnet_lite0",
    )  # fmt: skip
    assert args.concurrency is None and args.rate == [] and args.limit_batch == [1, 4]
    args = parser.parse_args(
        ["--concurrency", "1,16", "--rate", "50,100.5", "--no-limit-jpeg-draft"]
    )
    assert args.concurrency == [1, 16] and args.rate == [50.0, 100.5]
    assert args.limit_jpeg_draft is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--concurrency", "0"])


def test_tables_render_what_they_are_given():
    row = {
        "config": "a/1", "description": "2 proc x 1 thread, batch 1", "images_per_s": 100.0,
        "call_latency_ms": {"p50": 5.0, "p99": 9.0},
    }  # fmt: skip
    lim = {"configs": [row], "images_per_s": 100.0, "best_config": "a/1", "p50_ms": 4.0,
           "p50_config": "b/1"}  # fmt: skip
    p = point(90.0, 6.0, 0.9, {"UNAVAILABLE": 2})
    assert "limit: 100.0 img/s (a/1); single-image p50 4.00 ms (b/1)" in report.limit_table(lim)
    served = report.served_table([p], lim)
    assert "served/limit" in served and "0.90" in served and "UNAVAILABLE:2" in served
    assert report.stage_table([{**p, "server": {}}]) is None


def test_perf_analyzer_data_holds_the_same_inputs():
    import base64

    from imgclf.grpc.oip_tensors import parse_bytes_elements

    doc = wire.perf_analyzer_data([b"\xff\xd8jpeg", b"x"], image_input_name="image")
    first = doc["data"][0]["image"]
    assert parse_bytes_elements(base64.b64decode(first["b64"])) == [b"\xff\xd8jpeg"]
    arr = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    (entry,) = wire.perf_analyzer_data([arr], input_name="input")["data"]
    raw = base64.b64decode(entry["input"]["b64"])
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(3, 2, 2), arr)


def test_the_served_table_shows_the_spread_of_the_rounds():
    several = stats.combine_points([point(100, 5, 0.9), point(300, 9, 0.7), point(200, 7, 0.8)])
    single = point(150, 6, 0.8)
    lines = report.served_table([several, single], None).splitlines()
    assert lines[0].split()[:4] == ["load", "req/s", "img/s", "img/s"]  # "img/s range"
    assert lines[2].split()[1:4] == ["200.0", "200.0", "100.0..300.0"]
    assert lines[3].split()[1:4] == ["150.0", "150.0", "-"]
