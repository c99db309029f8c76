"""imgclf.modelmeta: the metadata contract between training (ONNX metadata_props) and serving."""

from __future__ import annotations

import json

import pytest

from imgclf.imaging import Preprocessing
from imgclf.modelmeta import REQUIRED_KEYS, ModelMetadata


def make_meta(**overrides) -> ModelMetadata:
    values = dict(
        labels=["cat", "dog", "bird"],
        input_size=(224, 192),
        resize_size=256,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        interpolation="bicubic",
        output="probabilities",
        provenance={"architecture": "resnet18", "val_acc1": 0.7612, "opset": 17},
    )
    values.update(overrides)
    return ModelMetadata(**values)


def minimal_props() -> dict[str, str]:
    return {
        "labels": '["a", "b"]',
        "input_size": "[224, 224]",
        "resize_size": "256",
        "mean": "[0.5, 0.5, 0.5]",
        "std": "[0.25, 0.25, 0.25]",
    }


def test_props_round_trip():
    meta = make_meta()
    props = meta.to_props()
    assert all(isinstance(v, str) for v in props.values())
    assert ModelMetadata.from_props(props) == meta


def test_props_are_json_with_flattened_provenance():
    props = make_meta().to_props()
    assert "provenance" not in props
    assert json.loads(props["labels"]) == ["cat", "dog", "bird"]
    assert json.loads(props["input_size"]) == [224, 192]
    assert json.loads(props["resize_size"]) == 256
    assert json.loads(props["interpolation"]) == "bicubic"
    assert json.loads(props["architecture"]) == "resnet18"
    assert json.loads(props["val_acc1"]) == pytest.approx(0.7612)


def test_from_props_decodes_json_values():
    meta = ModelMetadata.from_props(minimal_props())
    assert meta.labels == ["a", "b"]
    assert meta.input_size == (224, 224)
    assert meta.resize_size == 256
    assert meta.mean == (0.5, 0.5, 0.5)
    assert meta.std == (0.25, 0.25, 0.25)
    # defaults
    assert meta.interpolation == "bilinear"
    assert meta.output == "logits"
    assert meta.input_layout == "NCHW"
    assert meta.provenance == {}


def test_from_props_tolerates_plain_strings():
    props = minimal_props() | {"interpolation": "bicubic", "architecture": "resnet-18 (timm)"}
    meta = ModelMetadata.from_props(props)
    assert meta.interpolation == "bicubic"
    assert meta.provenance == {"architecture": "resnet-18 (timm)"}


def test_unknown_keys_land_in_provenance():
    props = minimal_props() | {"dataset": '"imagenette"', "val_acc1": "0.91"}
    meta = ModelMetadata.from_props(props)
    assert meta.provenance == {"dataset": "imagenette", "val_acc1": 0.91}


def test_overrides_win():
    overrides = {"labels": ["x", "y", "z"], "resize_size": 300, "output": "probabilities"}
    meta = ModelMetadata.from_props(minimal_props(), overrides=overrides)
    assert meta.labels == ["x", "y", "z"]
    assert meta.resize_size == 300
    assert meta.output == "probabilities"
    assert meta.input_size == (224, 224)  # untouched keys stay


def test_overrides_alone_suffice_for_a_foreign_model():
    overrides = {k: json.loads(v) for k, v in minimal_props().items()}
    assert ModelMetadata.from_props({}, overrides=overrides).labels == ["a", "b"]


def test_missing_keys_named():
    props = minimal_props()
    del props["labels"], props["std"]
    with pytest.raises(ValueError, match="lacks labels, std"):
        ModelMetadata.from_props(props)


def test_every_required_key_is_required():
    for key in REQUIRED_KEYS:
        props = minimal_props()
        del props[key]
        with pytest.raises(ValueError, match=key):
            ModelMetadata.from_props(props)


def test_bad_output_kind_rejected():
    with pytest.raises(ValueError, match="output must be one of"):
        ModelMetadata.from_props(minimal_props() | {"output": '"scores"'})


def test_bad_layout_rejected():
    with pytest.raises(ValueError, match="input_layout"):
        ModelMetadata.from_props(minimal_props() | {"input_layout": "CHWN"})


def test_nhwc_layout_means_pixel_input():
    meta = ModelMetadata.from_props(minimal_props() | {"input_layout": '"NHWC"'})
    h, w = meta.input_size
    assert meta.pixel_input and meta.sample_shape == (h, w, 3)
    plain = ModelMetadata.from_props(minimal_props())
    assert not plain.pixel_input and plain.sample_shape == (3, h, w)


def test_empty_labels_rejected():
    with pytest.raises(ValueError, match="labels"):
        ModelMetadata.from_props(minimal_props() | {"labels": "[]"})


def test_int_input_size_accepted():
    assert ModelMetadata.from_props(minimal_props() | {"input_size": "224"}).input_size == (
        224,
        224,
    )
    meta = ModelMetadata.from_props(minimal_props(), overrides={"input_size": 160})
    assert meta.input_size == (160, 160)


def test_labels_coerced_to_str():
    meta = ModelMetadata.from_props(minimal_props() | {"labels": "[0, 1, 2]"})
    assert meta.labels == ["0", "1", "2"]


def test_preprocessing_property():
    meta = make_meta()
    assert meta.preprocessing == Preprocessing(
        input_size=(224, 192),
        resize_size=256,
        interpolation="bicubic",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"interpolation": '"cubic"'},
        {"resize_size": "100"},  # smaller than input_size 224
        {"mean": "[0.5, 0.5]"},
    ],
    ids=["interpolation", "resize_smaller_than_input", "mean_of_two"],
)
def test_invalid_preprocessing_rejected_when_parsed(bad):
    """Metadata the eval preset cannot use must fail when the model is loaded, not later on
    every request (where the ValueError surfaces as an INTERNAL error)."""
    with pytest.raises(ValueError):
        ModelMetadata.from_props(minimal_props() | bad)
