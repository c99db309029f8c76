"""imgclf.client.bench.ratios (explained against plain, round by round) and the explained
requests of imgclf.client.bench.wire."""

from __future__ import annotations

import pytest

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.inference import grpc_service_pb2 as oip
from imgclf.client.bench import wire
from imgclf.client.bench.ratios import PLAIN, explain_arm, explain_costs


def point(label: str, arm: str, ips: float, cores: float | None = None) -> dict:
    return {"load": f"{label} {arm}", "arm": arm, "protocol": "grpc",
            "summary": {"throughput_ips": ips},
            "server": {} if cores is None else {"server_cpu_cores": cores}}  # fmt: skip


def test_explained_over_plain_pairs_each_round() -> None:
    explained = explain_arm(3)
    rounds = [
        [point("c=4", PLAIN, 20.0, 1.6), point("c=4", explained, 16.0, 1.6)],
        [point("c=4", PLAIN, 10.0, 1.0), point("c=4", explained, 10.0, 1.1)],
        [point("c=4", PLAIN, 25.0, 2.0), point("c=4", explained, 20.0, 1.8)],
    ]
    (cost,) = explain_costs(rounds)
    assert cost["load"] == "c=4"
    wall = cost["explained_over_plain"]["wall"]
    assert wall["rounds"] == pytest.approx([1.25, 1.0, 1.25])
    assert (wall["median"], wall["min"], wall["max"]) == pytest.approx((1.25, 1.0, 1.25))
    cpu = cost["explained_over_plain"]["cpu"]  # (1.6/16) / (1.6/20), (1.1/10)/(1/10), ...
    assert cpu["rounds"] == pytest.approx([1.25, 1.1, 1.125])
    assert cost["ms_per_image"][PLAIN]["wall"]["rounds"] == pytest.approx([50.0, 100.0, 40.0])
    assert cost["ms_per_image"]["explained"]["cpu"]["median"] == pytest.approx(100.0)


def test_no_cpu_ratio_without_the_server_figures() -> None:
    rounds = [[point("c=1", PLAIN, 10.0), point("c=1", explain_arm(1), 5.0)]]
    (cost,) = explain_costs(rounds)
    assert cost["explained_over_plain"].keys() == {"wall"}
    assert cost["explained_over_plain"]["wall"]["median"] == pytest.approx(2.0)


def test_explained_requests_ask_for_the_maps_and_plain_ones_do_not() -> None:
    items = [b"\xff\xd8a", b"\xff\xd8b"]
    _, plain = wire.build_payloads("imgclf", "m", items, 1)
    _, explained = wire.build_payloads("imgclf", "m", items, 1, explain=3)
    assert not pb.ClassifyRequest.FromString(plain[0]).HasField("explain")
    assert pb.ClassifyRequest.FromString(explained[1]).explain.top_k == 3
    _, infer = wire.build_payloads("oip", "m", items, 2, output_name="probabilities", explain=2)
    outputs = oip.ModelInferRequest.FromString(infer[0]).outputs
    assert [o.name for o in outputs] == ["probabilities", "cam"]
    assert outputs[1].parameters["classes"].int64_param == 2


def test_a_reply_without_the_maps_asked_for_is_not_taken() -> None:
    maps = [pb.ClassMap(index=i) for i in range(2)]
    reply = pb.ClassifyResponse(results=[pb.Classification(maps=maps)]).SerializeToString()
    assert wire.check_reply("imgclf", reply, 1, explain=2) is None
    assert wire.check_reply("imgclf", reply, 1, explain=3) == "[2] maps per image, not 3"
    out = oip.ModelInferResponse.InferOutputTensor
    infer = oip.ModelInferResponse(outputs=[out(name="probabilities", shape=[1, 5])])
    assert wire.check_reply("oip", infer.SerializeToString(), 1) is None
    assert "no cam output" in (wire.check_reply("oip", infer.SerializeToString(), 1, 1) or "")
    infer.outputs.append(out(name="cam", shape=[1, 1, 7, 7]))
    assert wire.check_reply("oip", infer.SerializeToString(), 1, 1) is None
