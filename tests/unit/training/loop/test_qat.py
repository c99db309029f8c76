"""imgclf.training.loop.qat: quantisation-aware fine-tuning distilled from the float model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from imgclf.training.loop.qat import (
    DEFAULT_QAT_LR,
    QatOptions,
    distillation_loss,
    finetune_quantized,
)
from imgclf.training.models.fakequant import PerChannelWeights


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()  # fmt: skip


def batches(count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 12, 12, generator=g), torch.zeros(16)) for _ in range(count)]


def test_the_distillation_loss_is_zero_only_when_the_student_decides_as_the_teacher() -> None:
    logits = torch.randn(4, 10)
    assert float(distillation_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits + torch.randn(4, 10), logits)) > 0.01
    # a constant shift of the logits is the same distribution
    assert float(distillation_loss(logits + 3.0, logits)) == pytest.approx(0.0, abs=1e-5)


def test_finetuning_moves_a_copy_onto_the_grid_and_lowers_the_distillation_loss() -> None:
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    data = batches(6, 0)
    calibration = torch.cat([x for x, _ in batches(2, 1)])
    logs: list[str] = []
    result = finetune_quantized(model, data, calibration, QatOptions(3, lr=1e-3), logs.append)
    for key, value in model.state_dict().items():  # the float model is left as it was
        assert torch.equal(value, before[key]), key
    assert result.model is not model
    for index in (0, 3, 8):  # every Conv2d and Linear
        weight = result.model[index].weight.detach()
        assert torch.equal(PerChannelWeights()(weight), weight)
        assert not torch.equal(weight, before[f"{index}.weight"])
    losses = [row["loss"] for row in result.history]
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert losses[-1] < losses[0]
    assert all(0.0 <= row["agreement"] <= 100.0 for row in result.history)
    assert len(logs) == 3 and logs[0].startswith("qat epoch 1/3: distillation loss")
    record = result.record()
    assert record["epochs"] == 3 and record["lr"] == 1e-3
    assert record["final_train_agreement"] == result.history[-1]["agreement"]
    assert not result.model.training  # handed back ready to export


def test_options_are_checked() -> None:
    assert QatOptions(1).lr == DEFAULT_QAT_LR
    with pytest.raises(ValueError, match=">= 1 epoch"):
        QatOptions(0)
    with pytest.raises(ValueError, match="positive"):
        QatOptions(1, lr=0.0)
    with pytest.raises(ValueError, match="no batches"):
        finetune_quantized(small_cnn(), [], torch.randn(2, 3, 12, 12), QatOptions(1))
