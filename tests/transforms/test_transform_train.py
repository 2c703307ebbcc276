"""Training pipelines: seeded outputs against a naive composition of torchvision primitives,
the unused-augmentation warning, and the timm path."""

import random
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import ColorJitter, InterpolationMode, RandomResizedCrop

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import (
    AugmentationCfg,
    MaybeConvertMode,
    MaybeToTensor,
    color_jitter,
    gray_scale,
    image_transform,
)


def _photo(mode="RGB", size=(90, 70), seed=0):
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return rgb.convert(mode)


def _naive_train(img, size, scale, jitter=None, jitter_p=None, gray_p=None, mean=OPENAI_DATASET_MEAN,
                 std=OPENAI_DATASET_STD):
    """The 3.3 torchvision training recipe spelled out step by step, drawing random numbers in the
    same order: crop box (torch), jitter coin (random) + jitter params (torch), grayscale coin."""
    top, left, h, w = RandomResizedCrop.get_params(img, scale, (3 / 4, 4 / 3))
    out_size = [size, size] if isinstance(size, int) else list(size)
    img = F.resized_crop(img, top, left, h, w, out_size, InterpolationMode.BICUBIC, antialias=True)
    img = img.convert("RGB")
    if jitter_p and random.random() < jitter_p:
        b, c, s, hue = jitter
        order, bf, cf, sf, hf = ColorJitter.get_params((1 - b, 1 + b), (1 - c, 1 + c), (1 - s, 1 + s),
                                                        (-hue, hue))
        for i in order.tolist():
            img = {0: lambda x: F.adjust_brightness(x, bf), 1: lambda x: F.adjust_contrast(x, cf),
                   2: lambda x: F.adjust_saturation(x, sf), 3: lambda x: F.adjust_hue(x, hf)}[i](img)
    if gray_p and random.random() < gray_p:
        img = img.convert("L").convert("RGB")
    x = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _seed(s):
    random.seed(s)
    torch.manual_seed(s)


@pytest.mark.parametrize("size", [48, (40, 56)])
@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA"])
def test_default_train_matches_naive(size, mode):
    img = _photo(mode)
    transform = image_transform(size, is_train=True)
    for seed in range(4):
        _seed(seed)
        ours = transform(img)
        _seed(seed)
        ref = _naive_train(img, size, (0.9, 1.0))
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_jitter_and_grayscale_match_naive():
    img = _photo("RGB", size=(64, 64), seed=1)
    aug = dict(scale=(0.4, 1.0), color_jitter=(0.4, 0.3, 0.2, 0.1), color_jitter_prob=0.5, gray_scale_prob=0.5)
    with pytest.warns(UserWarning):
        transform = image_transform(32, is_train=True, mean=0.5, std=0.25, aug_cfg=aug)
    grays = 0
    for seed in range(12):
        _seed(seed)
        ours = transform(img)
        _seed(seed)
        ref = _naive_train(img, 32, (0.4, 1.0), aug["color_jitter"], 0.5, 0.5, (0.5,) * 3, (0.25,) * 3)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
        grays += bool(torch.equal(ours[0], ours[1]) and torch.equal(ours[1], ours[2]))
    assert 0 < grays < 12  # both branches of the coin were exercised


def test_train_steps_and_interpolation_ignored():
    transform = image_transform(64, is_train=True, interpolation="bilinear", resize_mode="longest",
                                fill_color=7, aug_cfg=AugmentationCfg(scale=(0.3, 0.8)))
    crop, convert, to_tensor, normalize = transform.transforms
    assert isinstance(crop, RandomResizedCrop) and isinstance(convert, MaybeConvertMode)
    assert isinstance(to_tensor, MaybeToTensor)
    assert crop.interpolation == InterpolationMode.BICUBIC
    assert crop.scale == (0.3, 0.8) and crop.ratio == (3 / 4, 4 / 3)
    assert tuple(crop.size) == (64, 64)


def _warnings_of(**aug):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image_transform(32, is_train=True, aug_cfg=aug)
    return [str(w.message) for w in caught]


def test_unused_aug_warning_text():
    assert _warnings_of() == []
    assert _warnings_of(scale=(0.5, 1.0)) == []
    assert _warnings_of(ratio=(0.5, 2.0)) == [
        "Unused augmentation cfg items, specify `use_timm` to use (['ratio'])."
    ]
    # Quirk (keep): used jitter / grayscale keys are still listed, in dataclass field order.
    assert _warnings_of(gray_scale_prob=0.1, color_jitter_prob=0.5, color_jitter=(0.1, 0.1, 0.1, 0.1),
                        re_prob=0.2) == [
        "Unused augmentation cfg items, specify `use_timm` to use "
        "(['color_jitter', 're_prob', 'color_jitter_prob', 'gray_scale_prob'])."
    ]


def test_jitter_needs_four_values():
    with pytest.raises(AssertionError):
        image_transform(32, is_train=True, aug_cfg=dict(color_jitter=(0.4, 0.4, 0.4), color_jitter_prob=0.5))
    with pytest.raises(AssertionError):
        image_transform(32, is_train=True, aug_cfg=dict(color_jitter_prob=0.5))
    # without a probability the jitter is not applied (and only warned about)
    with pytest.warns(UserWarning):
        steps = image_transform(32, is_train=True, aug_cfg=dict(color_jitter=0.4)).transforms
    assert not any(isinstance(s, color_jitter) for s in steps)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_probability_range(p):
    with pytest.raises(AssertionError):
        color_jitter(0.1, 0.1, 0.1, 0.1, p=p)
    with pytest.raises(AssertionError):
        gray_scale(p)


def test_probabilistic_steps_defaults_and_extremes():
    assert color_jitter().p == 0.8 and gray_scale().p == 0.2
    img = _photo()
    assert gray_scale(0.0)(img) is img
    gray = np.asarray(gray_scale(1.0)(img))
    assert np.array_equal(gray[..., 0], np.asarray(img.convert("L"))) and np.ptp(gray, axis=-1).max() == 0


# ----------------------------------------------------------------------------------- timm path
timm_data = pytest.importorskip("timm.data")


@pytest.mark.parametrize("size, input_size", [(48, (3, 48, 48)), ((40, 56), (3, 40, 56)),
                                              ([40, 56], (3, 40, 56))])
def test_timm_path_matches_direct_timm(size, input_size):
    aug = dict(use_timm=True, scale=(0.5, 1.0), ratio=(0.8, 1.25), re_prob=0.5, re_count=2,
               color_jitter_prob=0.9, gray_scale_prob=0.9)
    ours = image_transform(size, is_train=True, mean=0.5, std=0.5, interpolation="bilinear", aug_cfg=aug)
    ref = timm_data.create_transform(
        input_size=input_size, is_training=True, hflip=0.0, mean=(0.5,) * 3, std=(0.5,) * 3,
        re_mode="pixel", interpolation="bilinear", scale=(0.5, 1.0), ratio=(0.8, 1.25), re_prob=0.5,
        re_count=2, color_jitter=None,
    )
    assert repr(ours) == repr(ref)
    img = _photo()
    for seed in range(3):
        _seed(seed)
        a = ours(img)
        _seed(seed)
        torch.testing.assert_close(a, ref(img), atol=0, rtol=0)


def test_timm_path_passes_jitter_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = image_transform(32, is_train=True, aug_cfg=AugmentationCfg(use_timm=True, color_jitter=0.3))
    assert "ColorJitter" in repr(t)
    t = image_transform(32, is_train=True, aug_cfg=AugmentationCfg(use_timm=True))
    assert "ColorJitter" not in repr(t)  # color_jitter=None is passed explicitly


def test_timm_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "timm.data", None)
    with pytest.raises(ImportError, match=r"pip install libreclip\[timm\]"):
        image_transform(32, is_train=True, aug_cfg=dict(use_timm=True))
    image_transform(32, is_train=True)  # the torchvision path does not need timm
