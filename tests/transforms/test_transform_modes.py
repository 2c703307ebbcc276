"""Input colour modes (RGB, RGBA, P, L, LA, I;16, CMYK, 1) and tensor inputs.

References follow the rules of spec 03 section 16: conversion to RGB happens after resizing,
with PIL's convert semantics; each reference below is written from those rules with numpy.
"""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import CenterCropOrPad, center_crop_or_pad, image_transform

_MEAN = np.array(OPENAI_DATASET_MEAN).reshape(3, 1, 1)
_STD = np.array(OPENAI_DATASET_STD).reshape(3, 1, 1)


def _normalised(rgb_hwc: np.ndarray) -> np.ndarray:
    return (rgb_hwc.transpose(2, 0, 1) / 255.0 - _MEAN) / _STD


def _rng(seed=0):
    return np.random.default_rng(seed)


def _check(img, ref_rgb_hwc, **kwargs):
    out = image_transform(img.size[1] if img.size[0] == img.size[1] else img.size[::-1],
                          is_train=False, resize_mode="squash", **kwargs)(img)
    np.testing.assert_allclose(out.numpy(), _normalised(ref_rgb_hwc), atol=1e-5, rtol=0)


# Same-size squash: the resize is a copy, so the output is exactly the mode conversion.

def test_l_replicated():
    a = _rng().integers(0, 256, (20, 30), dtype=np.uint8)
    _check(Image.fromarray(a), np.stack([a] * 3, -1))


def test_la_alpha_dropped():
    a = _rng().integers(0, 256, (20, 30, 2), dtype=np.uint8)
    img = Image.merge("LA", [Image.fromarray(a[..., 0]), Image.fromarray(a[..., 1])])
    _check(img, np.stack([a[..., 0]] * 3, -1))


def test_rgba_alpha_dropped_without_compositing():
    a = _rng().integers(0, 256, (20, 30, 4), dtype=np.uint8)
    a[:5, :, 3] = 0  # fully transparent rows keep their colour (no resize happened)
    _check(Image.fromarray(a), a[..., :3])


def test_palette_lookup():
    palette = _rng(1).integers(0, 256, 256 * 3, dtype=np.uint8)
    idx = _rng().integers(0, 256, (20, 30), dtype=np.uint8)
    img = Image.frombytes("P", (30, 20), idx.tobytes())
    img.putpalette(palette.tolist())
    _check(img, palette.reshape(256, 3)[idx])


def test_i16_clipped():
    a = _rng().integers(0, 2000, (20, 30)).astype(np.uint16)
    a[0, :4] = [0, 255, 256, 65535]
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    _check(img, np.stack([np.clip(a, 0, 255)] * 3, -1).astype(np.uint8))


def test_cmyk_converted():
    a = _rng().integers(0, 256, (20, 30, 4), dtype=np.uint8)
    img = Image.frombytes("CMYK", (30, 20), a.tobytes())
    c, k = a[..., :3].astype(float), a[..., 3:].astype(float)
    ref = (255 - c) * (255 - k) / 255  # subtractive model; PIL rounds in integer arithmetic
    out = image_transform((20, 30), is_train=False, resize_mode="squash")(img).numpy()
    np.testing.assert_allclose(out, _normalised(ref), atol=1.01 / 255 / min(OPENAI_DATASET_STD), rtol=0)


def test_bilevel_to_0_255():
    bits = _rng().integers(0, 2, (20, 32), dtype=np.uint8)
    img = Image.fromarray(bits * 255).convert("1")
    _check(img, np.stack([bits * 255] * 3, -1))


# With a real resize: conversion comes after resizing.

@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_l_resized_equals_rgb_resized(resize_mode, interpolation):
    """Resizing grayscale then replicating equals replicating then resizing (per-channel filter)."""
    a = _rng().integers(0, 256, (45, 70), dtype=np.uint8)
    t = image_transform(32, is_train=False, resize_mode=resize_mode, interpolation=interpolation)
    torch.testing.assert_close(t(Image.fromarray(a)), t(Image.fromarray(np.stack([a] * 3, -1))),
                               atol=0, rtol=0)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_palette_resized_with_nearest(interpolation):
    """PIL resizes P images with NEAREST whatever the interpolation asked for."""
    palette = _rng(1).integers(0, 256, 256 * 3, dtype=np.uint8).tolist()
    idx = _rng().integers(0, 256, (45, 70), dtype=np.uint8)
    img = Image.frombytes("P", (70, 45), idx.tobytes())
    img.putpalette(palette)
    out = image_transform((32, 40), is_train=False, resize_mode="squash", interpolation=interpolation)(img)
    ref = np.asarray(img.convert("RGB").resize((40, 32), Image.NEAREST))
    np.testing.assert_allclose(out.numpy(), _normalised(ref), atol=1e-5, rtol=0)


def test_rgba_transparent_black_after_resize():
    """Resizing RGBA works on premultiplied alpha, so fully transparent pixels come out black."""
    a = np.zeros((40, 40, 4), np.uint8)
    a[..., 0] = 255  # transparent red
    out = image_transform(20, is_train=False)(Image.fromarray(a)).numpy()
    np.testing.assert_allclose(out, _normalised(np.zeros((20, 20, 3))), atol=1e-5, rtol=0)
    same = image_transform(40, is_train=False)(Image.fromarray(a)).numpy()  # no resize: colour kept
    np.testing.assert_allclose(same, _normalised(a[..., :3].astype(float)), atol=1e-5, rtol=0)


def test_longest_pad_rgb_uses_fill_colour():
    a = _rng().integers(0, 256, (20, 40, 3), dtype=np.uint8)
    out = image_transform(40, is_train=False, resize_mode="longest", fill_color=9)(Image.fromarray(a))
    ref = np.full((40, 40, 3), 9, np.uint8)
    ref[10:30] = a  # 20 rows of padding split 10 / 10
    np.testing.assert_allclose(out.numpy(), _normalised(ref), atol=1e-5, rtol=0)


def test_longest_pad_palette_uses_palette_entry():
    """Padding a P image writes palette index `fill_color`, i.e. that palette colour."""
    palette = np.zeros((256, 3), np.uint8)
    palette[3] = (10, 200, 30)
    palette[7] = (250, 5, 60)
    img = Image.frombytes("P", (20, 11), np.full((11, 20), 7, np.uint8).tobytes())
    img.putpalette(palette.reshape(-1).tolist())
    out = image_transform(20, is_train=False, resize_mode="longest", fill_color=3)(img)
    ref = np.empty((20, 20, 3), np.uint8)
    ref[:] = palette[3]
    ref[4:15] = palette[7]  # 9 rows of padding: 4 on top, 5 below (odd pixel goes bottom)
    np.testing.assert_allclose(out.numpy(), _normalised(ref), atol=1e-5, rtol=0)


def test_longest_pad_then_centre():
    a = _rng().integers(0, 256, (10, 20, 3), dtype=np.uint8)
    # fit 10x20 (h x w) into (16, 12): ratio max(10/16, 20/12) = 5/3 -> [6, 12]; pad h to 16 (5 / 5)
    out = image_transform((16, 12), is_train=False, resize_mode="longest", interpolation="bilinear")(
        Image.fromarray(a))
    resized = np.asarray(Image.fromarray(a).resize((12, 6), Image.BILINEAR))
    ref = np.zeros((16, 12, 3), np.uint8)
    ref[5:11] = resized
    np.testing.assert_allclose(out.numpy(), _normalised(ref), atol=1e-5, rtol=0)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_center_crop_or_pad_mixed(as_tensor):
    """Pad the dimension that is too small (odd pixel bottom/right), centre-crop the other."""
    a = _rng().integers(0, 256, (10, 21, 3), dtype=np.uint8)
    ref = np.full((15, 12, 3), 5, np.uint8)
    left = int(round((21 - 12) / 2))  # 4.5 -> 4 (half to even)
    ref[2:12] = a[:, left:left + 12]   # 5 rows of padding: 2 on top, 3 below
    img = torch.from_numpy(a).permute(2, 0, 1) if as_tensor else Image.fromarray(a)
    out = center_crop_or_pad(img, (15, 12), fill=5)
    out = out.permute(1, 2, 0).numpy() if as_tensor else np.asarray(out)
    np.testing.assert_array_equal(out, ref)
    assert CenterCropOrPad([7]).size == (7, 7)
    with pytest.raises(ValueError, match="two dimensions"):
        CenterCropOrPad((1, 2, 3))


# Tensor inputs (float, 0..1, CHW): every path works (3.3 failed on longest / non-square shortest).

def _tensor_image(h=45, w=70):
    return torch.from_numpy(_rng().random((3, h, w), dtype=np.float32))


def _norm_t(x):
    return (x - torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)) / torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)


def _crop_centre(x, h, w):
    top, left = int(round((x.shape[-2] - h) / 2)), int(round((x.shape[-1] - w) / 2))
    return x[..., top:top + h, left:left + w]


def test_tensor_square_shortest_and_squash():
    x = _tensor_image()
    shortest = image_transform(32, is_train=False)(x)
    ref = _crop_centre(F.resize(x, [32, int(32 * 70 / 45)], F.InterpolationMode.BICUBIC), 32, 32)
    torch.testing.assert_close(shortest, _norm_t(ref), atol=1e-5, rtol=0)
    squash = image_transform((20, 30), is_train=False, resize_mode="squash", interpolation="bilinear")(x)
    torch.testing.assert_close(squash, _norm_t(F.resize(x, [20, 30], F.InterpolationMode.BILINEAR)),
                               atol=1e-5, rtol=0)


def test_tensor_non_square_shortest_and_longest():
    x = _tensor_image()
    out = image_transform((30, 40), is_train=False)(x)
    ratio = min(45 / 30, 70 / 40)
    ref = _crop_centre(F.resize(x, [round(45 / ratio), round(70 / ratio)], F.InterpolationMode.BICUBIC), 30, 40)
    torch.testing.assert_close(out, _norm_t(ref), atol=1e-5, rtol=0)

    out = image_transform(35, is_train=False, resize_mode="longest")(x)
    ratio = max(45 / 35, 70 / 35)
    resized = F.resize(x, [round(45 / ratio), round(70 / ratio)], F.InterpolationMode.BICUBIC)  # 22 x 35
    ref = torch.zeros(3, 35, 35)
    top = (35 - resized.shape[-2]) // 2
    ref[:, top:top + resized.shape[-2]] = resized
    torch.testing.assert_close(out, _norm_t(ref), atol=1e-5, rtol=0)
