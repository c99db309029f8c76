"""Quantisation-aware fine-tuning: a trained float model learns to keep its decisions under
8-bit arithmetic (imgclf.training.models.fakequant), for ``imgclf export --precision int8
--qat-epochs N``.

The student is a copy of the float model with simulated 8-bit weights and activations; its
teacher is the float model itself. The loss is the KL divergence from the teacher's class
probabilities (knowledge distillation; the labels are not used), because what the accuracy
gate asks of an INT8 variant is to decide as the float model decides, class by class, not to
be retrained. The model stays in eval mode throughout: batch-norm statistics frozen (so that
ONNX Runtime's folding of them into the convolutions keeps the simulated rounding exact), no
dropout. The activation ranges are observed before each epoch, on the calibration images the
export's ONNX Runtime calibration then uses on the final weights.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.training.models.fakequant import FakeQuantized

DEFAULT_QAT_LR = 1e-5
"""AdamW's learning rate: the weights move by fractions of an 8-bit step."""
CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class QatOptions:
    epochs: int
    lr: float = DEFAULT_QAT_LR
    seed: int = 0
    weight_bits: int = 8

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"quantisation-aware training needs >= 1 epoch, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")


@dataclass
class QatResult:
    model: nn.Module
    """The fine-tuned float model, every Conv2d and Linear weight on its INT8 grid."""
    options: QatOptions
    history: list[dict[str, float]] = field(default_factory=list)
    """Per epoch: the distillation loss and the student's top-1 agreement with the teacher on
    the training batches (augmented), both under simulated 8-bit arithmetic."""

    def record(self) -> dict[str, Any]:
        """What the INT8 model's metadata says of this fine-tuning."""
        last = self.history[-1] if self.history else {}
        return {
            **asdict(self.options),
            "loss": "KL divergence from the float model's probabilities (distillation)",
            "batch_norm": "frozen (eval mode)",
            "final_train_agreement": last.get("agreement"),
        }


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the classes, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=1),
        F.log_softmax(teacher_logits, dim=1),
        log_target=True,
        reduction="batchmean",
    )


def finetune_quantized(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    calibration_inputs: torch.Tensor,
    options: QatOptions,
    log: Callable[[str], None] = print,
) -> QatResult:
    """Fine-tune a copy of `model` under simulated 8-bit arithmetic for `options.epochs`
    passes over `batches` (re-iterated each epoch; (images, anything) pairs, CPU), with
    `calibration_inputs` (N, 3, H, W) setting the activation ranges. `model` is unchanged."""
    torch.manual_seed(options.seed)
    teacher = copy.deepcopy(model).cpu().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(model).cpu().eval()
    for p in student.parameters():
        p.requires_grad_(True)
    simulated = FakeQuantized(student, options.weight_bits)
    optimizer = torch.optim.AdamW(student.parameters(), lr=options.lr, weight_decay=0.0)
    result = QatResult(student, options)
    for epoch in range(1, options.epochs + 1):
        started = time.perf_counter()
        with simulated.observing(), torch.no_grad():  # the ranges of the weights as they are
            for start in range(0, len(calibration_inputs), CALIBRATION_BATCH):
                student(calibration_inputs[start : start + CALIBRATION_BATCH])
        loss_sum = agree = seen = 0.0
        for images, _ in batches:
            with torch.no_grad():
                target = teacher(images)
            logits = student(images)
            loss = distillation_loss(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(images)
            agree += float((logits.argmax(1) == target.argmax(1)).sum())
            seen += len(images)
        if not seen:
            raise ValueError("quantisation-aware training got no batches")
        row = {"epoch": epoch, "loss": loss_sum / seen, "agreement": 100.0 * agree / seen}
        result.history.append(row)
        log(
            f"qat epoch {epoch}/{options.epochs}: distillation loss {row['loss']:.5f}, "
            f"top-1 agreement with float {row['agreement']:.2f} % (training batches, "
            f"{options.weight_bits}-bit weights simulated) | {time.perf_counter() - started:.1f}s"
        )
    simulated.finish()
    student.eval()
    return result
