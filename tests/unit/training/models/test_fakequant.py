"""imgclf.training.models.fakequant: the simulation rounds as ONNX Runtime's INT8 export does
(per-channel weights through batch-norm folding, MinMax activations), and a fine-tuned model
leaves on the grid ONNX Runtime quantises it to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from onnxruntime.quantization.quant_utils import compute_scale_zp
from torch import nn

from imgclf.training.models.fakequant import (
    ActivationQuantizer,
    FakeQuantized,
    PerChannelWeights,
)
from imgclf.training.onnx.quantize import (
    Calibration,
    preprocess_for_quantization,
    quantize_int8,
    run_probabilities,
)


def small_cnn() -> nn.Module:
    """Conv-BN-ReLU6, depthwise conv-BN-ReLU6, global pooling, linear: a Lite block's shape,
    with batch-norm statistics far from the identity (negative scales too)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.3, 3.0)
            bn.weight.uniform_(-2.0, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


class BatchNormAct2d(nn.Sequential):
    """timm's name for a batch norm with its activation (Identity after a block's last conv)."""


class Residual(nn.Module):
    """An inverted-residual block's skip: x + BN(conv(x)) (timm's InvertedResidual)."""

    has_skip = True

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.bn = BatchNormAct2d(nn.BatchNorm2d(channels), nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + x


def residual_cnn() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), BatchNormAct2d(nn.BatchNorm2d(8), nn.ReLU6()),
        Residual(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (model[1][0], model[2].bn[0]):
            bn.running_var.uniform_(0.3, 3.0)
            bn.weight.uniform_(-2.0, 2.0)
    return model.eval()


def inputs(count: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(count, 3, 16, 16))).float()


def test_weights_round_to_127_steps_of_each_output_channels_largest_value() -> None:
    weight = torch.randn(6, 4, 3, 3) * torch.arange(1, 7).view(6, 1, 1, 1)
    rounded = PerChannelWeights()(weight)
    scale = weight.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    steps = rounded / scale
    np.testing.assert_allclose(steps, steps.round(), atol=1e-4)
    assert steps.abs().max() <= 127 + 1e-4
    np.testing.assert_allclose(rounded.abs().amax(dim=(1, 2, 3)), weight.abs().amax(dim=(1, 2, 3)))
    assert not torch.equal(rounded, weight)


def test_gradients_pass_straight_through_the_rounding() -> None:
    weight = torch.randn(4, 2, requires_grad=True)
    PerChannelWeights()(weight).sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))


@pytest.mark.parametrize("low, high", [(-1.3, 4.2), (0.0, 6.0), (0.5, 2.0), (-3.0, -1.0)])
def test_activation_scale_and_zero_point_are_onnxruntimes_minmax(low: float, high: float) -> None:
    q = ActivationQuantizer()
    q.low, q.high = low, high
    zero, scale = compute_scale_zp(
        np.array(low, np.float32), np.array(high, np.float32), np.uint8(0), np.uint8(255)
    )
    assert q.qparams() == (pytest.approx(float(scale), rel=1e-6), int(zero))


def export(model: nn.Module, path: Path) -> Path:
    torch.onnx.export(
        model, (inputs(2, 9),), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    return path


def weight_pairs(prepared: Path, qdq: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(float, dequantized INT8) of each weight ONNX Runtime quantised: the prepared float
    graph's weights (batch norm folded in) and what the INT8 kernels compute with."""
    floats = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(prepared)).graph.initializer}
    proto = onnx.load(str(qdq))
    init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    pairs = []
    for node in proto.graph.node:
        q = init.get(node.input[0])
        if node.op_type != "DequantizeLinear" or q is None or q.dtype != np.int8:
            continue
        scale = init[node.input[1]].reshape([-1] + [1] * (q.ndim - 1))
        original = floats[node.input[0].removesuffix("_quantized")]
        pairs.append((original.astype(np.float64), q.astype(np.float64) * scale))
    return pairs


def quantized_by_onnxruntime(
    model: nn.Module, tmp: Path, cal: torch.Tensor, bits: int = 8
) -> tuple[Path, Path]:
    prepared = preprocess_for_quantization(export(model, tmp / "float.onnx"), tmp / "prep.onnx")
    calibration = Calibration("minmax", weight_bits=bits)
    return prepared, quantize_int8(prepared, cal.numpy(), calibration, tmp / "int8.onnx")


@pytest.mark.parametrize("bits", [8, 7])
def test_a_finished_model_is_on_the_grid_onnxruntime_rounds_to(tmp_path: Path, bits: int) -> None:
    cal = inputs(32, 1)
    for name, finish in (("plain", False), ("simulated", True)):
        folder = tmp_path / name
        folder.mkdir()
        model = small_cnn()
        if finish:
            FakeQuantized(model, bits).finish()
        prepared, int8 = quantized_by_onnxruntime(model, folder, cal, bits)
        pairs = weight_pairs(prepared, int8)
        assert len(pairs) == 3  # two convolutions (batch norm folded in) and the linear layer
        worst = max(float(np.abs(f - q).max() / np.abs(f).max()) for f, q in pairs)
        if finish:  # rounding the unfolded weights was rounding the folded ones
            assert worst < 1e-6
        else:  # the check can fail: unrounded weights move
            assert worst > 1e-3


@pytest.mark.parametrize("bits", [8, 7])
@pytest.mark.parametrize("build", [small_cnn, residual_cnn])
def test_the_simulation_is_onnxruntimes_int8_arithmetic(tmp_path: Path, build, bits: int) -> None:
    cal, test = inputs(64, 2), inputs(64, 3)
    model = build()
    with torch.no_grad():
        floats = model(test).numpy()
    simulated = FakeQuantized(model, bits)
    with simulated.observing(), torch.no_grad():
        model(cal)
    with torch.no_grad():
        predicted = model(test).numpy()
    simulated.finish()
    _, int8 = quantized_by_onnxruntime(model, tmp_path, cal, bits)
    measured = run_probabilities(int8, test.numpy(), output="probabilities")
    # ONNX Runtime also rounds the logits to 8 bits (their range on the calibration images),
    # which the simulation leaves alone: round the prediction as it does
    proto = onnx.load(str(int8))
    init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    last = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and
                n.input[0] == "logits_QuantizeLinear_Input")  # fmt: skip
    scale, zero = float(init[last.input[1]]), int(init[last.input[2]])
    predicted = np.clip(np.rint(predicted / scale) + zero, 0, 255).astype(np.float64)
    predicted = (predicted - zero) * scale
    simulation_error = np.abs(predicted - measured).max()
    float_error = np.abs(floats - measured).max()
    # the simulation is ONNX Runtime's integer arithmetic, to within one step of the rounding
    # of the logits it leaves to ONNX Runtime (a value on a rounding boundary may go either way)
    assert simulation_error <= 1.01 * scale and float_error > 4 * scale, (
        simulation_error, float_error, scale
    )  # fmt: skip


def test_finish_removes_the_hooks_and_a_model_without_layers_is_refused() -> None:
    model = residual_cnn()
    simulated = FakeQuantized(model)
    assert any(m._forward_hooks for m in model.modules())  # outputs rounded too
    with simulated.observing(), torch.no_grad():
        model(inputs(4, 4))
    simulated.finish()
    with torch.no_grad():
        once, twice = model(inputs(4, 5)), model(inputs(4, 5))
    assert torch.equal(once, twice)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert not hasattr(model[0], "parametrizations")
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        FakeQuantized(nn.Sequential(nn.ReLU()))
