"""imgclf.imaging: decoding to upright RGB, the pixel limit, and the eval preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgclf.errors import InvalidInput
from imgclf.imaging import (
    Preprocessing,
    decode_image,
    normalize,
    preprocess_bytes,
    preprocess_image,
    resize_and_crop,
    resized_size,
    to_rgb,
)
from tests.unit.service.support import encode, png_declaring

IMAGENET = Preprocessing(input_size=(224, 224), resize_size=256)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "lossless"),
    [
        ("JPEG", {"quality": 95}, False),
        ("PNG", {}, True),
        ("WEBP", {"lossless": True}, True),
        ("WEBP", {"quality": 90}, False),
        ("BMP", {}, True),
    ],
)
def test_decode_formats_to_rgb(chelsea, fmt, params, lossless):
    img = decode_image(encode(chelsea, fmt, **params))
    assert img.mode == "RGB"
    assert img.size == (451, 300)
    pixels = np.asarray(img)
    if lossless:
        np.testing.assert_array_equal(pixels, chelsea)
    else:
        assert mean_abs_diff(pixels, chelsea) < 4.0


def test_decode_gif_palette_to_rgb(coffee):
    pal = Image.fromarray(coffee).quantize(colors=64)
    img = decode_image(encode(pal, "GIF"))
    assert img.mode == "RGB"
    assert img.size == (600, 400)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(pal.convert("RGB")))


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1)])
def test_exif_orientation_is_honoured(chelsea, orientation, turns):
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    data = encode(chelsea, "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (451, 300)  # stored landscape

    img = decode_image(data)

    assert img.size == (300, 451)  # shown portrait: width and height transposed
    upright = np.rot90(chelsea, k=turns)  # 6: rotate 90° clockwise, 8: counter-clockwise
    wrong_way = np.rot90(chelsea, k=-turns)
    assert mean_abs_diff(np.asarray(img), upright) < 4.0
    assert mean_abs_diff(np.asarray(img), wrong_way) > 20.0


def test_grayscale_png_gives_equal_channels(astronaut):
    gray = Image.fromarray(astronaut).convert("L")
    img = decode_image(encode(gray, "PNG"))
    assert img.mode == "RGB"
    px = np.asarray(img)
    for c in range(3):
        np.testing.assert_array_equal(px[..., c], np.asarray(gray))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_not_composited(chelsea, mode):
    rgba = Image.fromarray(chelsea).convert(mode)
    alpha = np.random.default_rng(0).integers(0, 256, (300, 451), dtype=np.uint8)
    rgba.putalpha(Image.fromarray(alpha))
    img = decode_image(encode(rgba, "PNG"))
    assert img.mode == "RGB"
    expected = np.asarray(rgba.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_cmyk_jpeg_gives_rgb(coffee):
    cmyk = Image.fromarray(coffee).convert("CMYK")
    img = decode_image(encode(cmyk, "JPEG", quality=95))
    assert img.mode == "RGB"
    assert img.size == (600, 400)
    assert mean_abs_diff(np.asarray(img), coffee) < 4.0


def test_palette_png_with_transparency(chelsea):
    pal = Image.fromarray(chelsea).quantize(colors=32)
    img = decode_image(encode(pal, "PNG", transparency=0))
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), np.asarray(pal.convert("RGB")))


def test_16bit_grayscale_png_scaled_to_8bit():
    ramp = np.linspace(0, 65535, 64 * 48).round().astype(np.uint16).reshape(48, 64)
    src = Image.fromarray(ramp)
    assert src.mode == "I;16"
    data = encode(src, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")

    img = decode_image(data)

    assert img.mode == "RGB"
    assert img.size == (64, 48)
    px = np.asarray(img)
    expected = np.floor(ramp / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(px[..., 0], expected)
    np.testing.assert_array_equal(px[..., 1], expected)
    assert px.min() == 0 and px.max() == 255


def test_bilevel_image_gives_rgb():
    bits = Image.new("1", (10, 6), 1)
    bits.putpixel((0, 0), 0)
    px = np.asarray(to_rgb(bits))
    assert px.shape == (6, 10, 3)
    assert tuple(px[0, 0]) == (0, 0, 0)
    assert tuple(px[1, 1]) == (255, 255, 255)


def test_empty_bytes_refused():
    with pytest.raises(InvalidInput, match="empty"):
        decode_image(b"")


def test_random_bytes_refused():
    noise = np.random.default_rng(1).bytes(4096)
    with pytest.raises(InvalidInput, match="not a decodable image"):
        decode_image(noise)


def test_truncated_jpeg_refused(chelsea):
    data = encode(chelsea, "JPEG", quality=90)
    with pytest.raises(InvalidInput, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit_checked_from_the_header_before_decoding():
    # 8000x8000 = 64M pixels: over the default 40M, under Pillow's own bomb threshold.
    with pytest.raises(InvalidInput, match=r"8000x8000 = 64000000 pixels, over the limit of 4000"):
        decode_image(png_declaring(8000, 8000))


def test_pixel_limit_boundary(chelsea):
    data = encode(chelsea, "PNG")
    assert decode_image(data, max_pixels=451 * 300).size == (451, 300)
    with pytest.raises(InvalidInput, match="over the limit of 135299"):
        decode_image(data, max_pixels=451 * 300 - 1)


def test_decompression_bomb_refused_by_the_pixel_limit():
    # 30000x30000 = 900M pixels. It must be refused *as too large*, with the pixel-limit message,
    # not reported as "not a decodable image".
    with pytest.raises(InvalidInput) as info:
        decode_image(png_declaring(30000, 30000))
    assert "over the limit" in str(info.value), str(info.value)


# --- resize / crop / normalize --------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "shorter", "expected"),
    [
        (451, 300, 256, (384, 256)),  # landscape: 256*451/300 = 384.85 -> 384
        (300, 451, 256, (256, 384)),  # portrait
        (512, 512, 224, (224, 224)),  # square
        (600, 400, 232, (348, 232)),  # exact: 232*600/400 = 348
        (640, 480, 256, (341, 256)),  # 341.33 -> 341 (truncated, not rounded)
        (480, 640, 256, (256, 341)),
        (333, 500, 224, (224, 336)),  # 336.34 -> 336
        (1000, 3, 10, (3333, 10)),
        (299, 300, 299, (299, 300)),
    ],
)
def test_resized_size_follows_torchvision(width, height, shorter, expected):
    assert resized_size(width, height, shorter) == expected


def test_resize_and_crop_gives_input_size_centred(chelsea):
    spec = Preprocessing(input_size=(224, 224), resize_size=256)
    src = Image.fromarray(chelsea)
    out = resize_and_crop(src, spec)
    assert out.size == (224, 224)
    resized = np.asarray(src.resize((384, 256), Image.Resampling.BILINEAR))
    top, left = round((256 - 224) / 2), round((384 - 224) / 2)  # 16, 80
    np.testing.assert_array_equal(np.asarray(out), resized[top : top + 224, left : left + 224])


def test_resize_and_crop_non_square_input(coffee):
    spec = Preprocessing(input_size=(200, 300), resize_size=320)
    out = resize_and_crop(Image.fromarray(coffee), spec)
    assert out.size == (300, 200)  # PIL size is (width, height)


def test_crop_only_when_already_at_resize_size(astronaut):
    src = astronaut[:300, :256]  # 256 wide, 300 high: already resized
    spec = Preprocessing(input_size=(224, 224), resize_size=256)
    out = np.asarray(resize_and_crop(Image.fromarray(src), spec))
    top, left = round((300 - 224) / 2), round((256 - 224) / 2)  # 38, 16
    np.testing.assert_array_equal(out, src[top : top + 224, left : left + 224])


def test_normalize_matches_direct_numpy(coffee):
    spec = Preprocessing(
        input_size=(224, 224), resize_size=256, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)
    )
    pixels = coffee[:50, :70]
    out = normalize(pixels, spec)
    assert out.dtype == np.float32
    assert out.shape == (3, 50, 70)
    assert out.flags.c_contiguous
    mean = np.array(spec.mean).reshape(3, 1, 1)
    std = np.array(spec.std).reshape(3, 1, 1)
    expected = (pixels.transpose(2, 0, 1) / 255.0 - mean) / std
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_preprocessing_validates():
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(input_size=(224, 224), resize_size=256, interpolation="cubic")
    with pytest.raises(ValueError, match="smaller than input_size"):
        Preprocessing(input_size=(224, 224), resize_size=200)


def test_preprocess_bytes_is_decode_then_preprocess(chelsea):
    data = encode(chelsea, "PNG")
    out = preprocess_bytes(data, IMAGENET)
    assert out.shape == (3, 224, 224)
    np.testing.assert_array_equal(out, preprocess_image(Image.fromarray(chelsea), IMAGENET))


def test_preprocess_image_converts_mode(chelsea):
    gray = Image.fromarray(chelsea).convert("L")
    out = preprocess_image(gray, IMAGENET)
    assert out.shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("photo", "input_size", "resize_size", "interpolation"),
    [
        ("chelsea", (224, 224), 256, "bilinear"),
        ("coffee", (224, 224), 232, "bicubic"),
        ("astronaut", (240, 200), 260, "bilinear"),
        ("chelsea_portrait", (224, 224), 256, "nearest"),
        ("coffee", (192, 256), 256, "lanczos"),
    ],
)
def test_preprocess_matches_torchvision(
    request, photo, input_size, resize_size, interpolation, chelsea
):
    pytest.importorskip("torch")
    transforms = pytest.importorskip("torchvision.transforms")
    modes = transforms.InterpolationMode
    arr = np.ascontiguousarray(chelsea.transpose(1, 0, 2)) if photo == "chelsea_portrait" else None
    if arr is None:
        arr = request.getfixturevalue(photo)
    img = Image.fromarray(arr)
    spec = Preprocessing(
        input_size=input_size, resize_size=resize_size, interpolation=interpolation
    )
    reference = transforms.Compose(
        [
            transforms.Resize(resize_size, interpolation=modes(interpolation)),
            transforms.CenterCrop(input_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )(img)

    ours = preprocess_image(img, spec)

    assert ours.shape == tuple(reference.shape) == (3, *input_size)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("mean", "std"), [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,) * 3, (0.5,) * 3)]
)
def test_normalize_looks_up_exactly_what_the_arithmetic_gives(mean, std):
    spec = Preprocessing(input_size=(16, 16), resize_size=16, mean=mean, std=std)
    # 768 values: 3k + c (mod 256) puts every level 0..255 in every channel.
    pixels = (np.arange(16 * 16 * 3) % 256).astype(np.uint8).reshape(16, 16, 3)
    assert all(len(np.unique(pixels[..., c])) == 256 for c in range(3))
    chw = pixels.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    inv_std = (1.0 / np.asarray(std, dtype=np.float32)).reshape(3, 1, 1)
    want = (chw - m) * inv_std
    got = normalize(pixels, spec)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (3, 16, 16)
    assert np.array_equal(got, want)  # bit for bit, not approximately
    assert np.array_equal(normalize(pixels.transpose(2, 0, 1).transpose(1, 2, 0), spec), want)
