"""What an exported graph says about class activation maps, for its metadata
(`class_activation_maps`): the feature tensor a server draws them from, read the way the server
reads it (imgclf.models.cam), or why there are none. Torch-free."""

from __future__ import annotations

from imgclf.models import cam


def activation_head(model_bytes: bytes) -> str:
    """`from <tensor> (<C> features, <K> classes)` for a global pooling + linear head, else
    `none: ` and the reason (e.g. an INT8 graph, whose weights DequantizeLinear computes)."""
    try:
        head = cam.find_head(model_bytes)
    except cam.HeadNotSupported as exc:
        return f"none: {exc}"
    classes, channels = head.weight.shape
    return f"from {head.feature} ({channels} features, {classes} classes)"
