"""Where one JPEG's server time goes, stage by stage, through the server's own functions.

    python -m benchmarks.cost_split --model efficientnet_lite0 [--int8-file FILE] \
        [--rounds 5] [--runs 20] [--pixel-models DIR]

The bench's real photos encoded as 640x480 JPEG (imgclf.client.bench.inputs) go through
imgclf.imaging as the server runs it (decode with JPEG draft allowed, resize to the shorter
side and center crop, pixels to a float32 CHW tensor, normalisation) and through ONNX Runtime
with the server's session options (one intra-op thread, one image): the float model, the INT8
file, and both again with uint8 NHWC input, normalisation in the graph (the front
``imgclf export --bake-preprocessing`` bakes in, here put before the same files' graphs by
`pixel_front`, so the INT8 body is exactly the one measured above). Rows are alternatives
too: bilinear against the model's interpolation, and a resize that computes only the pixels
the crop keeps (Pillow's ``box``). Every round times every stage in turn (`--runs` passes over
the photos); the table gives the median CPU milliseconds per image (the process's CPU time:
what other work on the cores does not inflate), their range, and the median wall time.

With ``--pixel-models DIR``, DIR/<model>_pixels/1/ receives both uint8-input files (metadata
``input_layout: NHWC``) so that ``imgclf bench --variants fp32,int8 --model-repository DIR
--model <model>_pixels`` serves them. What the serving around these stages costs comes from
the server's metrics: ``imgclf bench --variants`` prints them per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from imgclf.client.bench import inputs
from imgclf.imaging import (
    DRAFT_MARGIN,
    INTERPOLATIONS,
    Preprocessing,
    decode_8bit,
    normalize,
    resize_and_crop,
    resized_size,
)
from imgclf.repolayout import INT8_FILE, MODEL_FILE, versions


def pixel_front(src: Path, dst: Path, mean: tuple, std: tuple) -> None:
    """`src` with a uint8 NHWC input named ``pixels``: Cast, Transpose to NCHW, one Mul and
    one Add ((x / 255 - mean) / std) feeding the original float input; metadata
    ``input_layout: NHWC``."""
    proto = onnx.load(str(src))
    graph = proto.graph
    old = graph.input[0]
    dims = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]
    scale = (1.0 / (255.0 * np.asarray(std, np.float32))).reshape(1, 3, 1, 1)
    bias = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(1, 3, 1, 1)
    graph.initializer.extend([
        numpy_helper.from_array(scale.astype(np.float32), "pixels_scale"),
        numpy_helper.from_array(bias.astype(np.float32), "pixels_bias"),
    ])  # fmt: skip
    front = [
        helper.make_node("Cast", ["pixels"], ["pixels_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pixels_f"], ["pixels_chw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["pixels_chw", "pixels_scale"], ["pixels_scaled"]),
        helper.make_node("Add", ["pixels_scaled", "pixels_bias"], [old.name]),
    ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(front + nodes)
    new = helper.make_tensor_value_info("pixels", TensorProto.UINT8, [dims[0], *dims[2:], dims[1]])
    graph.input.remove(old)
    graph.input.insert(0, new)
    for p in proto.metadata_props:
        if p.key == "input_layout":
            p.value = json.dumps("NHWC")
            break
    else:
        proto.metadata_props.add(key="input_layout", value=json.dumps("NHWC"))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))


def session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    from imgclf.runtime.options import ExecutionOptions, session_options

    so = session_options(ExecutionOptions(providers="cpu", intra_op_threads=1))
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def box_resize_and_crop(img: Image.Image, spec: Preprocessing) -> Image.Image:
    """resize_and_crop computing only the cropped pixels: the same scale and window, Pillow's
    resize with a source ``box``."""
    crop_h, crop_w = spec.input_size
    new_w, new_h = resized_size(img.width, img.height, spec.resize_size)
    sx, sy = img.width / new_w, img.height / new_h
    top, left = round((new_h - crop_h) / 2.0), round((new_w - crop_w) / 2.0)
    box = (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
    return img.resize((crop_w, crop_h), INTERPOLATIONS[spec.interpolation], box=box)


def arithmetic_normalize(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """What imgclf.imaging.normalize computed before its table lookup (the same bits)."""
    m = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    inv_std = (1.0 / np.asarray(spec.std, dtype=np.float32)).reshape(3, 1, 1)
    chw = pixels.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)
    return np.ascontiguousarray((chw - m) * inv_std, dtype=np.float32)


def stages(
    spec: Preprocessing, files: dict[str, Path], jpegs: list[bytes]
) -> dict[str, tuple[Callable, int]]:
    """Stage name -> (a function of one photo's index, the images one call handles); inputs
    made once, outside the timing. Inference runs at batch 1 and, for the float-input files,
    at batch 4 (the server's batch under 16 clients on this machine)."""
    draft = DRAFT_MARGIN * spec.resize_size
    decoded = [decode_8bit(b, min_shorter_side=draft) for b in jpegs]
    cropped = [np.asarray(resize_and_crop(i, spec)) for i in decoded]
    tensors = [normalize(c, spec)[None] for c in cropped]
    pixels = [c[None] for c in cropped]
    bilinear = Preprocessing(spec.input_size, spec.resize_size, "bilinear", spec.mean, spec.std)
    n = len(jpegs)
    fours = [np.concatenate([tensors[(i + j) % n] for j in range(4)]) for i in range(n)]
    out: dict[str, tuple[Callable, int]] = {
        "decode (JPEG, draft allowed)": (
            lambda i: decode_8bit(jpegs[i], min_shorter_side=draft), 1),
        f"resize + crop ({spec.interpolation})": (
            lambda i: resize_and_crop(decoded[i], spec), 1),
        "resize + crop (bilinear)": (lambda i: resize_and_crop(decoded[i], bilinear), 1),
        f"resize of the crop only ({spec.interpolation}, box)": (
            lambda i: box_resize_and_crop(decoded[i], spec), 1),
        "to array + normalise": (lambda i: normalize(np.asarray(cropped[i]), spec), 1),
        "normalise by arithmetic (before the table lookup)": (
            lambda i: arithmetic_normalize(cropped[i], spec), 1),
    }  # fmt: skip
    for tag, path in files.items():
        run = session(path)
        feed = pixels if tag.endswith("uint8 input") else tensors
        out[f"inference {tag}"] = (lambda i, run=run, feed=feed: run(feed[i]), 1)
        if not tag.endswith("uint8 input"):
            out[f"inference {tag}, batch of 4"] = (lambda i, run=run: run(fours[i]), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--model-repository", type=Path, default=Path("models"))
    p.add_argument("--int8-file", type=Path, help="default: the version's model.int8.onnx")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=20, help="passes over the photos per stage")
    p.add_argument("--pixel-models", type=Path, help="write the uint8-input files here")
    opts = p.parse_args(argv)
    source = versions(opts.model_repository / opts.model)[0].path.parent
    float_file, int8_file = source / MODEL_FILE, opts.int8_file or source / INT8_FILE
    spec = inputs.spec_from_onnx(opts.model, float_file).preprocessing
    out_dir = opts.pixel_models or Path(tempfile.mkdtemp(prefix="imgclf-cost-split-"))
    pixel_dir = out_dir / f"{opts.model}_pixels" / "1"
    pixel_dir.mkdir(parents=True, exist_ok=True)
    pixel_front(float_file, pixel_dir / MODEL_FILE, spec.mean, spec.std)
    pixel_front(int8_file, pixel_dir / INT8_FILE, spec.mean, spec.std)
    files = {
        "FP32": float_file, "INT8": int8_file,
        "FP32, uint8 input": pixel_dir / MODEL_FILE, "INT8, uint8 input": pixel_dir / INT8_FILE,
    }  # fmt: skip
    photos = inputs.jpeg_images((640, 480))
    jpegs = [b for _, b in photos]
    timed = stages(spec, files, jpegs)
    for run, _ in timed.values():
        for i in range(len(jpegs)):
            run(i)
    cpu: dict[str, list[float]] = {k: [] for k in timed}
    wall: dict[str, list[float]] = {k: [] for k in timed}
    for _ in range(opts.rounds):
        for name, (run, per_call) in timed.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            for _ in range(opts.runs):
                for i in range(len(jpegs)):
                    run(i)
            images = opts.runs * len(jpegs) * per_call
            cpu[name].append(1000 * (time.process_time() - started_cpu) / images)
            wall[name].append(1000 * (time.perf_counter() - started) / images)
    if not opts.pixel_models:
        shutil.rmtree(out_dir)
    size = sum(map(len, jpegs)) / len(jpegs) / 1e3
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\n{opts.model}: {len(jpegs)} photos ({', '.join(n for n, _ in photos)}) as 640x480 "
          f"JPEG, mean {size:.0f} kB; one thread; {opts.rounds} rounds x {opts.runs} passes; "
          f"int8 file {int8_file}; load average at the end {load}")  # fmt: skip
    print("| stage | CPU ms per image, median | range | wall ms, median |\n|---|---|---|---|")
    for name, values in cpu.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} "
              f"| {statistics.median(wall[name]):.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
