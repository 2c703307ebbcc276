"""Eval pipelines: the 54 golden OpenCLIP 3.3 outputs, the step lists per resize mode, and the
size-rounding rules of the two `shortest` paths."""

import json
import pathlib
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import (
    CenterCropOrPad,
    MaybeConvertMode,
    MaybeToTensor,
    PreprocessCfg,
    ResizeKeepRatio,
    image_transform,
    image_transform_v2,
)

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
_ENTRIES = json.loads((FIXTURES / "transforms.json").read_text())


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURES / "transforms.npz") as z:
        return {k: z[k] for k in z.files}


def test_fixture_count():
    assert len(_ENTRIES) == 54


@pytest.mark.parametrize("entry", _ENTRIES, ids=[e["key"] for e in _ENTRIES])
def test_golden_fixture(entry, golden):
    transform = image_transform(is_train=False, **entry["args"])
    out = transform(Image.open(FIXTURES / "images" / entry["image"]))  # no .convert on purpose
    expected = golden[entry["key"]]
    assert out.dtype == torch.float32
    assert tuple(out.shape) == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5, rtol=0)


def _step_types(transform):
    return [type(t) for t in transform.transforms]


_TAIL = [MaybeConvertMode, MaybeToTensor, Normalize]


@pytest.mark.parametrize(
    "kwargs, lead",
    [
        (dict(image_size=224), [Resize, CenterCrop]),
        (dict(image_size=(224, 224)), [Resize, CenterCrop]),
        (dict(image_size=[96, 96], resize_mode="shortest"), [Resize, CenterCrop]),
        (dict(image_size=(48, 80)), [ResizeKeepRatio, CenterCrop]),
        (dict(image_size=64, resize_mode="longest"), [ResizeKeepRatio, CenterCropOrPad]),
        (dict(image_size=(48, 80), resize_mode="longest"), [ResizeKeepRatio, CenterCropOrPad]),
        (dict(image_size=64, resize_mode="squash"), [Resize]),
        (dict(image_size=(48, 80), resize_mode="squash"), [Resize]),
    ],
)
def test_composition_per_mode(kwargs, lead):
    transform = image_transform(is_train=False, **kwargs)
    assert isinstance(transform, Compose)
    assert _step_types(transform) == lead + _TAIL


def test_square_shortest_uses_plain_int_resize():
    transform = image_transform((96, 96), is_train=False, interpolation="bilinear")
    resize, crop = transform.transforms[:2]
    assert resize.size == 96 and resize.interpolation == InterpolationMode.BILINEAR
    assert tuple(crop.size) == (96, 96)


def test_squash_int_becomes_square_size():
    resize = image_transform(64, is_train=False, resize_mode="squash").transforms[0]
    assert tuple(resize.size) == (64, 64)


def test_non_square_shortest_ignores_interpolation():
    """Quirk (keep): the (H, W) shortest path resizes bicubically even when asked for bilinear."""
    resize = image_transform((48, 80), is_train=False, interpolation="bilinear").transforms[0]
    assert resize.interpolation == InterpolationMode.BICUBIC
    assert resize.longest == 0


@pytest.mark.parametrize("interp, mode", [("bilinear", "BILINEAR"), ("bicubic", "BICUBIC"), ("random", "BICUBIC")])
def test_eval_interpolation_mapping(interp, mode):
    for kwargs in (dict(resize_mode="squash"), dict(resize_mode="longest"), dict()):
        step = image_transform(64, is_train=False, interpolation=interp, **kwargs).transforms[0]
        assert step.interpolation == InterpolationMode[mode]


def test_normalize_is_last_and_carries_stats():
    normalize = image_transform(224, is_train=False).transforms[-1]
    assert tuple(normalize.mean) == OPENAI_DATASET_MEAN
    assert tuple(normalize.std) == OPENAI_DATASET_STD


def test_square_shortest_truncates_long_side():
    """640x480 to 224: torchvision's shorter-side resize gives int(224 * 640 / 480) = 298."""
    img = Image.new("RGB", (640, 480))
    resized = image_transform(224, is_train=False).transforms[0](img)
    assert resized.size == (298, 224)
    assert int(224 * 640 / 480) == 298


def test_non_square_shortest_rounds_long_side():
    """ResizeKeepRatio uses round(): 640x480 to (224, 256) gives width round(640 / (480/224)) = 299."""
    img = Image.new("RGB", (640, 480))
    resized = image_transform((224, 256), is_train=False).transforms[0](img)
    ratio = min(480 / 224, 640 / 256)
    assert resized.size == (round(640 / ratio), round(480 / ratio)) == (299, 224)


def test_resize_keep_ratio_longest_example():
    """Spec example: a 25x14 (h x w) image to 64 with longest=1 becomes [64, 36]."""
    img = Image.new("RGB", (14, 25))
    assert ResizeKeepRatio.get_params(img, (64, 64), longest=1) == [64, 36]
    assert ResizeKeepRatio(64, longest=1)(img).size == (36, 64)


def test_resize_keep_ratio_round_half_even():
    """Target sides use Python round(): 2.5 -> 2 and 3.5 -> 4 (half to even, not half up)."""
    # Source 4 x w (h x w) into (2, 100) fitting the long side: ratio = 4 / 2 = 2, width w / 2.
    assert ResizeKeepRatio.get_params(Image.new("L", (5, 4)), (2, 100), longest=1) == [2, 2]
    assert ResizeKeepRatio.get_params(Image.new("L", (7, 4)), (2, 100), longest=1) == [2, 4]
    # Covering (longest=0) takes the smaller ratio: 10 x 5 into (4, 4) -> ratio 1.25 -> [8, 4].
    assert ResizeKeepRatio.get_params(Image.new("L", (5, 10)), (4, 4), longest=0) == [8, 4]


def test_v2_matches_v1(golden):
    """image_transform_v2 forwards every PreprocessCfg field; check on a golden `longest` case."""
    entry = next(e for e in _ENTRIES if e["key"] == "v3__chelsea.png")
    cfg = PreprocessCfg(size=64, interpolation="bilinear", resize_mode="longest", fill_color=0)
    out = image_transform_v2(cfg, is_train=False)(Image.open(FIXTURES / "images" / entry["image"]))
    np.testing.assert_allclose(out.numpy(), golden[entry["key"]], atol=1e-5, rtol=0)


def test_v2_accepts_what_the_factory_passes():
    """create_model_and_transforms builds PreprocessCfg(**model.visual.preprocess_cfg), where size
    is a tuple for ViTs, an int for ResNets, and mean/std may be lists after a JSON round trip."""
    for size in ((224, 224), 224, [256, 192]):
        cfg = PreprocessCfg(**{
            "size": size, "mode": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "interpolation": "bilinear", "resize_mode": "squash", "fill_color": 0,
        })
        val = image_transform_v2(cfg, is_train=False)
        train = image_transform_v2(cfg, is_train=True, aug_cfg={"scale": (0.5, 1.0)})
        h, w = (size, size) if isinstance(size, int) else size
        img = Image.new("RGB", (300, 200), (10, 20, 30))
        assert tuple(val(img).shape) == (3, h, w)
        assert tuple(train(img).shape) == (3, h, w)


def test_mean_std_as_given_reach_normalize():
    normalize = image_transform(32, is_train=False, mean=[0.1, 0.2, 0.3], std=(0.4, 0.5, 0.6)).transforms[-1]
    assert list(normalize.mean) == [0.1, 0.2, 0.3] and tuple(normalize.std) == (0.4, 0.5, 0.6)


@pytest.mark.filterwarnings("ignore:Unused augmentation cfg items")
@pytest.mark.parametrize("is_train", [False, True])
@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_pickle_round_trip(is_train, resize_mode):
    """DataLoader workers started with spawn pickle the transform; results must not change."""
    transform = image_transform((40, 48), is_train=is_train, resize_mode=resize_mode,
                                aug_cfg=dict(color_jitter=(0.1,) * 4, color_jitter_prob=0.5, gray_scale_prob=0.5)
                                if is_train else None)
    clone = pickle.loads(pickle.dumps(transform))
    img = Image.open(FIXTURES / "images" / "chelsea.png")
    random.seed(0)
    torch.manual_seed(0)
    a = transform(img)
    random.seed(0)
    torch.manual_seed(0)
    assert torch.equal(a, clone(img))
