"""Simulated 8-bit arithmetic in a PyTorch model, for quantisation-aware fine-tuning.

It simulates what ``imgclf export --precision int8`` makes of the model
(imgclf.training.onnx.quantize: ONNX Runtime's static QDQ quantisation):
- **weights** of every Conv2d and Linear: signed 8 bits, symmetric, one scale per output
  channel, scale = max|w| / 127 (ONNX Runtime's QInt8 per-channel weights, range [-127, 127];
  with 7-bit weights max|w| / 64, range [-64, 64]).
  Batch normalisation that ONNX Runtime later folds into a convolution scales each output
  channel, and per-channel symmetric rounding commutes with that scaling, so rounding the
  unfolded weights is rounding the folded ones, as long as the batch-norm statistics stay
  frozen (the model is fine-tuned in eval mode);
- **activations**: unsigned 8 bits, one scale and zero point per tensor from the range observed
  on calibration batches, widened to include 0 (ONNX Runtime's MinMax calibration, QUInt8),
  where ONNX Runtime rounds them: entering every Conv2d, Linear and pooling layer; leaving
  timm's BatchNormAct2d (a convolution's output with its batch norm folded in and its
  activation fused, as ONNX Runtime quantises it, including the last convolution of a
  residual block before its Add); and leaving a residual block (its Add: modules with a true
  ``has_skip``, timm, or ``use_res_connect``, torchvision). Not simulated: a convolution's
  output before an activation other than ReLU/ReLU6 (SiLU, Hardswish: ONNX Runtime rounds it
  before the activation, the simulation after), the convolution before a residual Add
  outside timm's blocks (torchvision's inverted residuals round only the Add's output), other
  residual Adds (ResNet's blocks), Conv1d/Conv3d/ConvTranspose weights, and the logits, which
  ONNX Runtime also rounds. The simulation is exact for what it covers; for the rest it is
  an approximation, and the accuracy gate measures the real INT8 model either way.

Both round in the forward pass and pass gradients straight through (the straight-through
estimator). ``finish`` removes the simulation and leaves each weight on its 8-bit grid, so
that ONNX Runtime's own per-channel rounding of the exported model changes no weight.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

WEIGHT_QMAX = {8: 127, 7: 64}
"""Signed weights in [-127, 127] (ONNX Runtime's symmetric QInt8), or [-64, 64] in 7 bits
(its reduce_range)."""
ACTIVATION_QMIN, ACTIVATION_QMAX = 0, 255
"""Unsigned activations (QUInt8)."""
QUANTIZED_LAYERS = (nn.Conv2d, nn.Linear)
"""Layers whose weights are rounded."""
QUANTIZED_INPUTS = (
    nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
"""Layers whose input is rounded."""


class PerChannelWeights(nn.Module):
    """A parametrisation rounding a weight to signed 8 (or 7) bits per output channel (axis 0)."""

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        self.qmax = WEIGHT_QMAX[bits]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, weight.ndim))
        absmax = weight.detach().abs().amax(dim=dims).float()
        scale = torch.where(absmax > 0, absmax / self.qmax, torch.ones_like(absmax))
        zero = torch.zeros(len(scale), dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -self.qmax, self.qmax)


class ActivationQuantizer:
    """Observes the range of one tensor (a layer's input or output), then rounds it to
    unsigned 8 bits."""

    def __init__(self) -> None:
        self.low = float("inf")
        self.high = float("-inf")
        self.observing = True

    def qparams(self) -> tuple[float, int]:
        """ONNX Runtime's scale and zero point for the observed range (0 included)."""
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        if high - low <= 0:
            return 1.0, 0
        scale = (high - low) / (ACTIVATION_QMAX - ACTIVATION_QMIN)
        zero = round(ACTIVATION_QMIN - low / scale)
        return scale, min(max(zero, ACTIVATION_QMIN), ACTIVATION_QMAX)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """`x` rounded; None (unchanged) while observing."""
        if self.observing:
            self.low = min(self.low, float(x.detach().min()))
            self.high = max(self.high, float(x.detach().max()))
            return None
        scale, zero = self.qparams()
        return torch.fake_quantize_per_tensor_affine(
            x, scale, zero, ACTIVATION_QMIN, ACTIVATION_QMAX
        )

    def input_hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple | None:
        x = self(args[0])
        return None if x is None else (x, *args[1:])

    def output_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = self(output)
        return output if x is None else x


def rounds_output(module: nn.Module) -> bool:
    """Whether ONNX Runtime rounds the module's output where no simulated input rounding
    sees it: timm's BatchNormAct2d, and residual blocks (their Add)."""
    return (
        type(module).__name__ == "BatchNormAct2d"
        or bool(getattr(module, "has_skip", False))
        or bool(getattr(module, "use_res_connect", False))
    )


class FakeQuantized:
    """The simulation attached to a model: weights round at once, activations once
    ``observing`` has seen calibration batches."""

    def __init__(self, model: nn.Module, weight_bits: int = 8) -> None:
        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, QUANTIZED_LAYERS)]
        if not self.layers:
            raise ValueError("the model has no Conv2d or Linear layer to quantise")
        self.activations: list[ActivationQuantizer] = []
        self.handles: list[RemovableHandle] = []
        for module in model.modules():
            if isinstance(module, QUANTIZED_INPUTS):
                self.activations.append(q := ActivationQuantizer())
                self.handles.append(module.register_forward_pre_hook(q.input_hook))
            if rounds_output(module):
                self.activations.append(q := ActivationQuantizer())
                self.handles.append(module.register_forward_hook(q.output_hook))
        for layer in self.layers:
            parametrize.register_parametrization(layer, "weight", PerChannelWeights(weight_bits))

    @contextmanager
    def observing(self) -> Iterator[None]:
        """Within: forward passes record activation ranges anew (weights already round)."""
        for q in self.activations:
            q.low, q.high = float("inf"), float("-inf")
            q.observing = True
        try:
            yield
        finally:
            for q in self.activations:
                q.observing = False

    def finish(self) -> nn.Module:
        """Remove the simulation; each weight stays on its INT8 grid. Returns the model."""
        for handle in self.handles:
            handle.remove()
        for layer in self.layers:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        return self.model
