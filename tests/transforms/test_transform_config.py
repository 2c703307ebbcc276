"""PreprocessCfg / AugmentationCfg / merge_preprocess_* and image_transform's argument rules."""

import dataclasses

import pytest

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import (
    AugmentationCfg,
    PreprocessCfg,
    image_transform,
    merge_preprocess_dict,
    merge_preprocess_kwargs,
)

_PP_FIELDS = ["size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"]


def test_preprocess_cfg_fields_and_defaults():
    assert [f.name for f in dataclasses.fields(PreprocessCfg)] == _PP_FIELDS
    cfg = PreprocessCfg()
    assert dataclasses.astuple(cfg) == (
        224, "RGB", OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, "bicubic", "shortest", 0
    )
    assert cfg.num_channels == 3


@pytest.mark.parametrize("size, expected", [(224, (3, 224, 224)), ((256, 192), (3, 256, 192)),
                                            ([256, 192], (3, 256, 192))])
def test_input_size(size, expected):
    # A list size raised TypeError in 3.3 (tuple + list); fixed.
    assert PreprocessCfg(size=size).input_size == expected


def test_preprocess_cfg_mode_must_be_rgb():
    with pytest.raises(AssertionError):
        PreprocessCfg(mode="L")


def test_merge_from_dataclass_base():
    merged = merge_preprocess_dict(PreprocessCfg(), {"mean": (0.5,) * 3, "std": None, "bogus": 1})
    assert isinstance(merged, dict)
    assert list(merged) == _PP_FIELDS
    assert merged["mean"] == (0.5,) * 3          # overlay wins
    assert merged["std"] == OPENAI_DATASET_STD   # None in overlay ignored
    assert "bogus" not in merged


def test_merge_from_dict_base_keeps_none_and_filters():
    base = {"size": 224, "mean": None, "model_cfg": {}, "resize_mode": "squash"}
    merged = merge_preprocess_dict(base, {"size": (256, 256), "interpolation": None})
    # Quirk (keep): base values survive even when None; unknown base keys are dropped.
    assert merged == {"size": (256, 256), "mean": None, "resize_mode": "squash"}
    assert base["size"] == 224  # input not mutated


@pytest.mark.parametrize("overlay", [None, {}])
def test_merge_empty_overlay(overlay):
    assert merge_preprocess_dict({"fill_color": 3, "x": 1}, overlay) == {"fill_color": 3}


def test_merge_kwargs_wraps_dict():
    assert merge_preprocess_kwargs(PreprocessCfg(), size=96, mode=None) == dict(
        dataclasses.asdict(PreprocessCfg()), size=96
    )


def test_augmentation_cfg_defaults_and_unknown_key():
    assert dataclasses.asdict(AugmentationCfg()) == {
        "scale": (0.9, 1.0), "ratio": None, "color_jitter": None, "re_prob": None,
        "re_count": None, "use_timm": False, "color_jitter_prob": None, "gray_scale_prob": None,
    }
    with pytest.raises(TypeError):
        AugmentationCfg(scales=(0.5, 1.0))
    with pytest.raises(TypeError):
        image_transform(64, is_train=True, aug_cfg={"not_a_field": 1})


@pytest.mark.parametrize("mean, expected", [
    (0.5, (0.5, 0.5, 0.5)),
    (None, OPENAI_DATASET_MEAN),
    (0, OPENAI_DATASET_MEAN),      # Quirk (keep): falsy means the default
    ((), OPENAI_DATASET_MEAN),
    ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]),
])
def test_mean_normalisation(mean, expected):
    for is_train in (False, True):
        normalize = image_transform(32, is_train=is_train, mean=mean, std=mean).transforms[-1]
        assert normalize.mean == expected
        assert normalize.std == (OPENAI_DATASET_STD if expected is OPENAI_DATASET_MEAN else expected)


@pytest.mark.parametrize("kwargs", [dict(interpolation="nearest"), dict(resize_mode="crop"),
                                    dict(interpolation="BICUBIC")])
def test_bad_interpolation_or_resize_mode_asserts(kwargs):
    with pytest.raises(AssertionError):
        image_transform(64, is_train=False, **kwargs)
