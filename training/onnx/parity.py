"""Parity: ONNX Runtime against PyTorch on real images, or the export fails.

Every image runs alone (batch size 1) and in batches of each larger size (images cycled to
fill a batch), so a graph whose batch axis is not really dynamic fails too.

- float32 variants: every output within ``|ort - torch| <= atol + rtol * |torch|`` and the
  same top-1 class for every image;
- float16 variants: the same top-1 class for every image whose float32 top-1/top-2 margin is
  above what float16 can resolve (FP16_TIE_MARGIN); the largest difference is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from imgclf.training.onnx.graphs import ExportError

PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-3
FP16_TIE_MARGIN = 1e-2
"""float16 carries ~3 decimal digits: top-1 flips below this relative margin are ties."""


class ParityError(ExportError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    batch_sizes: tuple[int, ...]
    num_images: int
    max_abs_diff: float
    worst_excess: float
    """max over outputs of |ort - torch| - (atol + rtol * |torch|); <= 0 passes (float32)."""
    top1_mismatches: int
    atol: float
    rtol: float
    top1_only: bool = False
    """float16: only the top-1 agreement counts."""
    ties_skipped: int = 0

    @property
    def ok(self) -> bool:
        return self.top1_mismatches == 0 and (self.top1_only or self.worst_excess <= 0.0)

    def __str__(self) -> str:
        tolerance = (
            "top-1 agreement (float16)"
            if self.top1_only
            else f"atol {self.atol:g}, rtol {self.rtol:g}"
        )
        ties = f", {self.ties_skipped} near-ties not counted" if self.ties_skipped else ""
        return (
            f"parity on {self.num_images} images at batch sizes {list(self.batch_sizes)}: "
            f"max |diff| {self.max_abs_diff:.3g} ({tolerance}), "
            f"top-1 mismatches {self.top1_mismatches}{ties}"
        )


def run_onnx(session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    """The first output of `session` for one batch."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: batch})[0]


def _batches(count: int, batch_sizes: Sequence[int]) -> list[np.ndarray]:
    """Index arrays: each image alone, then one batch per larger size (cycling the images)."""
    out = [np.asarray([i]) for i in range(count)] if 1 in batch_sizes else []
    out += [np.arange(bs) % count for bs in batch_sizes if bs != 1]
    return out


def check_parity(
    reference: Callable[[np.ndarray], np.ndarray],
    session: ort.InferenceSession,
    onnx_inputs: np.ndarray,
    batch_sizes: Sequence[int],
    atol: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
    top1_only: bool = False,
    run: Callable[[ort.InferenceSession, np.ndarray], np.ndarray] | None = None,
) -> ParityReport:
    """Compare `session` on `onnx_inputs` with `reference(indices)` (the PyTorch outputs of
    the same images, float32) at each batch size."""
    run = run or run_onnx
    max_diff, worst, mismatches, ties = 0.0, -np.inf, 0, 0
    for idx in _batches(len(onnx_inputs), batch_sizes):
        expected = np.asarray(reference(idx), dtype=np.float64)
        got = np.asarray(run(session, onnx_inputs[idx]), dtype=np.float64)
        if got.shape != expected.shape:
            raise ParityError(f"ONNX output {got.shape} vs PyTorch {expected.shape}")
        diff = np.abs(got - expected)
        max_diff = max(max_diff, float(diff.max()))
        worst = max(worst, float((diff - (atol + rtol * np.abs(expected))).max()))
        differ = got.argmax(1) != expected.argmax(1)
        if top1_only and expected.shape[1] > 1:
            top2 = np.sort(expected, axis=1)[:, -2:]
            scale = np.maximum(np.abs(expected).max(axis=1), 1.0)
            tie = (top2[:, 1] - top2[:, 0]) <= FP16_TIE_MARGIN * scale
            ties += int((differ & tie).sum())
            differ &= ~tie
        mismatches += int(differ.sum())
    return ParityReport(
        tuple(batch_sizes),
        len(onnx_inputs),
        max_diff,
        worst,
        mismatches,
        float(atol),
        float(rtol),
        top1_only,
        ties,
    )
