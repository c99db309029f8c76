"""imgclf.training.models.architectures / transfer / weights / models_list: models by name,
generic head replacement, freezing, weights from files/packages/libraries (and the clear offline
error)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from imgclf.training import models_list  # noqa: E402
from imgclf.training.models.architectures import (  # noqa: E402
    create_model,
    model_defaults,
    model_family,
    rebuild_kwargs,
)
from imgclf.training.models.transfer import (  # noqa: E402
    find_heads,
    freeze_backbone,
    parameter_groups,
    replace_heads,
    set_train_mode,
    unfreeze,
)
from imgclf.training.models.weights import (  # noqa: E402
    EFFICIENTNET_LITE0_PACKAGE,
    WeightsUnavailable,
    build_model,
    efficientnet_lite0_weights_path,
    load_weights_file,
    map_state_dict,
)

# name -> (head(s) after replacement, input side for a forward pass)
FAMILIES = {
    "resnet18": (["fc"], 32),
    "alexnet": (["classifier.6"], 63),
    "googlenet": (["fc", "aux1.fc2", "aux2.fc2"], 64),
    "inception_v3": (["fc", "AuxLogits.fc"], 299),  # the aux head trains at >= 299
    "mobilenet_v3_small": (["classifier.3"], 32),
    "efficientnet_b0": (["classifier.1"], 32),
    "convnext_tiny": (["classifier.2"], 32),
    "densenet121": (["classifier"], 32),
    "squeezenet1_1": (["classifier.1"], 48),
    "shufflenet_v2_x0_5": (["fc"], 32),
    "regnet_y_400mf": (["fc"], 32),
    "timm:resnet10t": (["fc"], 32),
    "timm:vit_tiny_patch16_224": (["head"], 224),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_heads_are_replaced_generically(name: str) -> None:
    """A 1000-class model (as pretrained weights come) gets 3-class heads, aux heads too."""
    heads, side = FAMILIES[name]
    torch.manual_seed(0)
    model = create_model(name, 1000)
    assert replace_heads(model, 3) == heads
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3)
        if len(heads) > 1:  # Inception and GoogLeNet return aux logits in training mode
            out = model.train()(x)
            assert all(o.shape == (2, 3) for o in out if o is not None)


def test_inception_below_299_trains_without_its_aux_head() -> None:
    from imgclf.training.models.architectures import size_kwargs

    assert size_kwargs("inception_v3", 128) == {"aux_logits": False}
    assert size_kwargs("inception_v3", 299) == {} and size_kwargs("googlenet", 64) == {}
    model = create_model("inception_v3", 3, **size_kwargs("inception_v3", 96))
    assert find_heads(model) == ["fc"]
    assert model.train()(torch.randn(2, 3, 96, 96)).shape == (2, 3)


def test_families_and_defaults() -> None:
    assert [model_family(n) for n in ("digits_cnn_w8", "resnet18", "tf_efficientnet_lite0")] == [
        "digits_cnn",
        "torchvision",
        "timm",
    ]
    with pytest.raises(ValueError, match="imgclf models"):
        model_family("no_such_net")
    inception = model_defaults("inception_v3")
    assert (inception.input_size, inception.resize_size, inception.min_input_size) == (299, 342, 75)
    lite0 = model_defaults("tf_efficientnet_lite0")
    assert (lite0.input_size, lite0.resize_size, lite0.interpolation) == (224, 256, "bicubic")
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)
    assert model_defaults("digits_cnn").input_size == 32


def test_pretrained_googlenet_is_rebuilt_the_way_it_was_built(monkeypatch) -> None:
    """Pretrained GoogLeNet drops its aux heads and normalises its input differently: the
    checkpoint records that (model_kwargs) so export rebuilds the same network."""
    import torchvision

    real = torchvision.models.get_model

    def offline_googlenet(name: str, weights=None, **kwargs):
        model = real(name, weights=None, aux_logits=False, transform_input=True, init_weights=False)
        return model  # what torchvision builds for weights=DEFAULT, without the download

    monkeypatch.setattr(torchvision.models, "get_model", offline_googlenet)
    model = build_model("googlenet", 3, "DEFAULT")
    assert find_heads(model) == ["fc"]
    assert rebuild_kwargs(model) == {"transform_input": True, "aux_logits": False}
    monkeypatch.setattr(torchvision.models, "get_model", real)
    again = create_model("googlenet", 3, **rebuild_kwargs(model))
    assert set(again.state_dict()) == set(model.state_dict())


def test_freezing_head_groups_and_frozen_batchnorm() -> None:
    model = create_model("resnet18", 3)
    frozen = freeze_backbone(model)
    assert "conv1.weight" in frozen and "fc.weight" not in frozen
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    set_train_mode(model, True)
    assert model.training and model.fc.training and not model.bn1.training
    groups = parameter_groups(model, lr=0.1, head_lr_mult=10.0, weight_decay=1e-4)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [
        ("backbone", 0.1, 60),
        ("head", pytest.approx(1.0), 2),
    ]
    unfreeze(model)
    set_train_mode(model, True)
    assert all(p.requires_grad for p in model.parameters())
    assert not model.bn1.training  # a frozen backbone's BN statistics stay after unfreezing
    fresh = create_model("resnet18", 3)
    set_train_mode(fresh, True)
    assert fresh.bn1.training

    model = create_model("resnet18", 3)
    frozen = freeze_backbone(model, until="layer2")
    assert frozen[-1].startswith("layer2.") and not any(n.startswith("layer3") for n in frozen)
    with pytest.raises(ValueError, match="top-level layers: conv1, bn1, layer1"):
        freeze_backbone(model, until="layer9")


def test_weights_file_by_name_with_ddp_prefix_and_a_new_head(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    source = create_model("digits_cnn_w4", 5)
    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": wrapped, "epoch": 3}, tmp_path / "ckpt.pth")
    target = build_model("digits_cnn_w4", 3, str(tmp_path / "ckpt.pth"))
    out = capsys.readouterr().out
    assert "loaded by name" in out and "10.weight, 10.bias" in out
    assert torch.equal(target.state_dict()["0.0.weight"], source.state_dict()["0.0.weight"])
    assert target.state_dict()["10.weight"].shape == (3, 16)


def test_weights_mapped_by_position_when_names_differ(tmp_path: Path) -> None:
    source = create_model("digits_cnn_w4", 3)
    tensors = [v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")]
    renamed = {f"net.layer{i}": v for i, v in enumerate(tensors)}  # as the Lite0 package
    target = create_model("digits_cnn_w4", 3)
    mapped, left_out, how = map_state_dict(renamed, target.state_dict())
    assert how == "by position" and left_out == [] and len(mapped) == len(renamed) == 27
    torch.save(renamed, tmp_path / "w.pth")
    load_weights_file(target, tmp_path / "w.pth")
    assert all(
        torch.equal(a, b)
        for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="do not fit"):
        map_state_dict({"x": torch.zeros(1)}, target.state_dict())


def test_package_weights_lite0_with_a_new_head() -> None:
    model = build_model("tf_efficientnet_lite0", 4, EFFICIENTNET_LITE0_PACKAGE)
    package = torch.load(efficientnet_lite0_weights_path(), weights_only=True)
    assert torch.equal(model.conv_stem.weight, package["_conv_stem.weight"])
    assert model.classifier.out_features == 4
    with pytest.raises(ValueError, match="is for --model tf_efficientnet_lite0"):
        build_model("resnet18", 4, EFFICIENTNET_LITE0_PACKAGE)


def test_library_weights_without_a_network_fail_clearly(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url: str, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailable) as info:
        build_model("resnet18", 3, "DEFAULT")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path) in message
    assert "https://download.pytorch.org/models/" in message and "--weights /path" in message
    with pytest.raises(ValueError, match="has no weights 'NOPE'"):
        build_model("resnet18", 3, "NOPE")

    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsUnavailable, match="Hugging Face cache"):
        build_model("timm:resnet10t", 3, "pretrained")


def test_digits_cnn_has_no_library_weights() -> None:
    with pytest.raises(ValueError, match="takes a weights file"):
        build_model("digits_cnn", 3, "DEFAULT")


def test_models_command_lists_families(capsys) -> None:
    assert models_list.main(["--filter", "inception"]) == 0
    out = capsys.readouterr().out
    assert "inception_v3" in out and "299" in out and "IMAGENET1K_V1" in out
    assert models_list.main(["--timm", "tf_efficientnet_lite0"]) == 0
    out = capsys.readouterr().out
    assert "timm:tf_efficientnet_lite0" in out and EFFICIENTNET_LITE0_PACKAGE in out
    assert "digits_cnn" not in out  # --timm PATTERN: only those timm models
    assert models_list.main(["--filter", "efficientnet_lite0"]) == 0
    out = capsys.readouterr().out  # timm models are listed without --timm
    assert "timm:tf_efficientnet_lite0" in out and "timm:efficientnet_lite0 " in out


def test_unused_layers_are_not_heads() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3)
            self.out = nn.Linear(4, 7)

    assert find_heads(Odd()) == ["out"]  # the fallback: the last Linear layer


def test_hub_offline_fails_before_any_download_attempt(tmp_path, monkeypatch) -> None:
    """HF_HUB_OFFLINE and nothing cached: refused at once, naming the repo and the cache."""
    from huggingface_hub import constants

    from imgclf.training.models.weights import check_hub_weights_fetchable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as info:
        check_hub_weights_fetchable("timm:resnet10t")
    assert str(info.value).startswith(
        f"timm/resnet10t.c3_in1k is not in the Hugging Face cache ({tmp_path}) and "
        "HF_HUB_OFFLINE is set"
    )
