"""What the benchmark sends: real photos re-encoded at a chosen size, or the model's tensors.

Photos: scikit-image's chelsea, coffee, astronaut, rocket and scikit-learn's two sample
images (china, flower), center-cropped to the target aspect ratio, resized with Pillow and
encoded as JPEG quality 90. Tensors: the same photos through the model's own preprocessing
(`imgclf.imaging.preprocess_bytes`), read from the ONNX metadata of a local model file, or,
without one, the input shape the server reports and ImageNet-style defaults.
"""

from __future__ import annotations

import importlib.util
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.client.bench import BENCH_EXTRA, IMAGE_SIZES, MissingDependency
from imgclf.imaging import Preprocessing, pixels_from_bytes, preprocess_bytes
from imgclf.modelmeta import ModelMetadata
from imgclf.repolayout import CONFIG_FILE, read_json, versions

JPEG_QUALITY = 90
SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def parse_size(text: str) -> tuple[int, int] | None:
    """'0.3mp' / '1mp' / '3mp' / '12mp' / 'WxH' -> (width, height); 'native' -> None."""
    key = text.strip().lower()
    if key == "native":
        return None
    if key in IMAGE_SIZES:
        return IMAGE_SIZES[key]
    match = re.fullmatch(r"(\d+)x(\d+)", key)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise ValueError(
            f"image size must be one of {', '.join(IMAGE_SIZES)}, native or WxH, got {text!r}"
        )
    return int(match[1]), int(match[2])


def _missing(name: str | None) -> MissingDependency:
    return MissingDependency(
        f"the benchmark's photos come from scikit-image and scikit-learn ({name} is missing): "
        f"{BENCH_EXTRA}"
    )


def sklearn_sample_images() -> list[tuple[str, np.ndarray]]:
    """scikit-learn's sample images (china, flower): read from the installed package's files
    when they are where load_sample_images keeps them (importing sklearn takes seconds)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise _missing("sklearn")
    for root in spec.submodule_search_locations or []:
        files = sorted((Path(root) / "datasets" / "images").glob("*.jpg"))
        if files:
            return [(f.stem, np.asarray(Image.open(f).convert("RGB"))) for f in files]
    from sklearn.datasets import load_sample_images  # pragma: no cover - another layout

    sample = load_sample_images()  # pragma: no cover
    return [(Path(p).stem, np.asarray(i)) for p, i in zip(sample.filenames, sample.images,
                                                          strict=True)]  # fmt: skip


def load_photos() -> list[tuple[str, np.ndarray]]:
    """The real photos as (name, HWC uint8 RGB)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise _missing(exc.name) from None
    photos = [(name, np.asarray(getattr(data, name)())) for name in SKIMAGE_PHOTOS]
    photos += sklearn_sample_images()
    return [(name, img[..., :3] if img.ndim == 3 else img) for name, img in photos]


def fit(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Center-crop `img` to the aspect ratio of `size` (width, height), then resize to it."""
    width, height = size
    src_w, src_h = img.size
    if src_w * height > src_h * width:  # too wide
        crop_w = round(src_h * width / height)
        left = (src_w - crop_w) // 2
        img = img.crop((left, 0, left + crop_w, src_h))
    elif src_w * height < src_h * width:  # too tall
        crop_h = round(src_w * height / width)
        top = (src_h - crop_h) // 2
        img = img.crop((0, top, src_w, top + crop_h))
    return img.resize(size, Image.Resampling.BICUBIC) if img.size != size else img


def encode_jpeg(pixels: np.ndarray, size: tuple[int, int] | None) -> bytes:
    img = Image.fromarray(pixels).convert("RGB")
    if size is not None:
        img = fit(img, size)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def jpeg_images(size: tuple[int, int] | None) -> list[tuple[str, bytes]]:
    """Every photo as JPEG bytes at `size` (None: as the photo is)."""
    return [(name, encode_jpeg(pixels, size)) for name, pixels in load_photos()]


@dataclass
class ModelSpec:
    """What the benchmark knows about the model it drives."""

    name: str
    input_shape: tuple[int, int, int]
    """One image's input: (C, H, W), or (H, W, C) for a pixel-input model."""
    preprocessing: Preprocessing
    source: str
    """Where the preprocessing came from (for the report)."""
    path: Path | None = None
    """The local ONNX file (the in-process limit runs it)."""
    input_name: str = "input"
    output_name: str = ""
    notes: list[str] = field(default_factory=list)
    pixel_input: bool = False
    """The model takes uint8 HWC pixels (resized and cropped) and normalises them itself."""

    def as_dict(self) -> dict[str, object]:
        p = self.preprocessing
        return {
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "input_shape": list(self.input_shape),
            "pixel_input": self.pixel_input,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "preprocessing": {
                "input_size": list(p.input_size),
                "resize_size": p.resize_size,
                "interpolation": p.interpolation,
                "mean": list(p.mean),
                "std": list(p.std),
            },
            "preprocessing_source": self.source,
        }


def default_model_path(repository: Path, model: str) -> Path | None:
    """models/<model>/<newest version>/model.onnx, when it exists."""
    found = versions(repository / model)
    return found[0].path if found else None


def spec_from_onnx(name: str, path: Path) -> ModelSpec:
    """The preprocessing from the ONNX metadata (a version's config.json overrides it)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = dict(session.get_modelmeta().custom_metadata_map)
    meta = ModelMetadata.from_props(props, read_json(path.parent / CONFIG_FILE))
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    return ModelSpec(
        name, meta.sample_shape, meta.preprocessing, f"ONNX metadata of {path}", path,
        input_name=inp.name, output_name=out.name, pixel_input=meta.pixel_input,
    )  # fmt: skip


def spec_from_shape(name: str, shape: tuple[int, int, int], source: str) -> ModelSpec:
    """Preprocessing guessed from the input shape (ImageNet-style resize 256/224, mean/std):
    tensors of the right shape and scale; what matters for timing."""
    pixels = shape[-1] == 3 and shape[0] != 3  # (H, W, 3): a pixel-input model
    h, w = shape[:2] if pixels else shape[1:]
    spec = Preprocessing(input_size=(h, w), resize_size=round(min(h, w) * 256 / 224))
    note = (
        f"preprocessing: input shape from {source}; resize/mean/std are ImageNet defaults "
        "(give --model-path for the model's own)"
    )
    return ModelSpec(name, shape, spec, source, notes=[note], pixel_input=pixels)


def remote_input_shape(
    channel: object, model: str, input_name: str, metadata: tuple = ()
) -> tuple[str, tuple] | None:
    """(source, (C, H, W)) from imgclf's ListModels, else from the Open Inference Protocol's
    ModelMetadata (any OIP server); None when neither tells."""
    import grpc

    from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
    from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
    from imgclf._generated.inference import grpc_service_pb2 as oip
    from imgclf._generated.inference import grpc_service_pb2_grpc as oip_grpc

    try:
        reply = pb_grpc.ImageClassifierStub(channel).ListModels(
            pb.ListModelsRequest(), timeout=10, metadata=metadata
        )
        for m in reply.models:
            if m.name == model and len(m.input_shape) == 3:
                return "ListModels", tuple(int(d) for d in m.input_shape)
    except grpc.RpcError:
        pass
    try:
        meta = oip_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            oip.ModelMetadataRequest(name=model), timeout=10, metadata=metadata
        )
        for t in meta.inputs:
            if t.name == input_name and len(t.shape) >= 3 and min(t.shape[-3:]) > 0:
                return "ModelMetadata", tuple(int(d) for d in t.shape[-3:])
    except grpc.RpcError:
        pass
    return None


def pixels(images: list[tuple[str, bytes]], spec: ModelSpec) -> list[tuple[str, np.ndarray]]:
    """The photos resized and cropped to the model input, uint8 in the model's layout: CHW
    (the server normalises them), or HWC for a pixel-input model (it normalises them)."""
    out = []
    for name, data in images:
        hwc = pixels_from_bytes(data, spec.preprocessing)
        out.append(
            (name, hwc if spec.pixel_input else np.ascontiguousarray(hwc.transpose(2, 0, 1)))
        )
    return out


def tensors(images: list[tuple[str, bytes]], spec: ModelSpec) -> list[tuple[str, np.ndarray]]:
    """The photos through the model's eval preprocessing: float32 CHW each (a pixel-input
    model's preprocessed input is its pixels)."""
    if spec.pixel_input:
        return pixels(images, spec)
    return [(name, preprocess_bytes(data, spec.preprocessing)) for name, data in images]
