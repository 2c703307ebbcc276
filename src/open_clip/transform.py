"""Image preprocessing: the config dataclasses and the eval / train pipeline builders.

`PreprocessCfg` travels with a model (`model.visual.preprocess_cfg`) and says how its images
were normalised; `AugmentationCfg` holds the training augmentations. `image_transform` turns
those settings into a torchvision `Compose` whose output matches OpenCLIP 3.3 pixel for pixel.
The individual steps live in `transform_ops.py`.
"""

import numbers
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Union

from PIL import Image
from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, RandomResizedCrop, Resize

from .constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from .transform_ops import (
    CenterCropOrPad,
    CheckedCompose,
    MaybeConvertMode,
    MaybeToTensor,
    ResizeKeepRatio,
    _setup_size,  # noqa: F401 (3.3 name)
    center_crop_or_pad,
    check_image,
    color_jitter,
    gray_scale,
)
from .utils import to_2tuple  # noqa: F401 (3.3 re-exported it here)

__all__ = [
    "AugmentationCfg",
    "CenterCropOrPad",
    "MaybeConvertMode",
    "MaybeToTensor",
    "PreprocessCfg",
    "ResizeKeepRatio",
    "center_crop_or_pad",
    "check_image",
    "color_jitter",
    "gray_scale",
    "image_transform",
    "image_transform_v2",
    "merge_preprocess_dict",
    "merge_preprocess_kwargs",
]

_INTERPOLATIONS = ("bicubic", "bilinear", "random")
_RESIZE_MODES = ("shortest", "longest", "squash")


def _to_2tuple(x: Any) -> tuple:
    """Repeat a scalar; turn any other iterable into a tuple (3.3 kept lists, which broke `+`)."""
    if isinstance(x, (str, bytes)) or not hasattr(x, "__iter__"):
        return (x, x)
    return tuple(x)


@dataclass
class PreprocessCfg:
    """How a model expects its images: size, colour mode, normalisation, resize policy."""

    size: Union[int, tuple[int, int]] = 224
    mode: str = "RGB"
    mean: tuple[float, ...] = OPENAI_DATASET_MEAN
    std: tuple[float, ...] = OPENAI_DATASET_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    def __post_init__(self):
        assert self.mode in ("RGB",)

    @property
    def num_channels(self) -> int:
        return 3

    @property
    def input_size(self) -> tuple:
        return (self.num_channels,) + _to_2tuple(self.size)


_PREPROCESS_KEYS = {f.name for f in fields(PreprocessCfg)}


def merge_preprocess_dict(
    base: Union[PreprocessCfg, dict[str, Any]],
    overlay: Optional[dict[str, Any]],
) -> dict[str, Any]:
    """Merge `overlay` onto `base`, keeping only `PreprocessCfg` fields; returns a plain dict.

    Base values are kept even when None; overlay values that are None are ignored.
    """
    if isinstance(base, PreprocessCfg):
        merged = asdict(base)
    else:
        merged = {k: v for k, v in base.items() if k in _PREPROCESS_KEYS}
    if overlay:
        merged.update({k: v for k, v in overlay.items() if k in _PREPROCESS_KEYS and v is not None})
    return merged


def merge_preprocess_kwargs(base: Union[PreprocessCfg, dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """`merge_preprocess_dict(base, kwargs)`."""
    return merge_preprocess_dict(base, kwargs)


@dataclass
class AugmentationCfg:
    """Training augmentation settings. Without `use_timm` only `scale`, `color_jitter`
    (4-tuple, with `color_jitter_prob`) and `gray_scale_prob` take effect."""

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: Optional[tuple[float, float]] = None
    color_jitter: Optional[Union[float, tuple[float, float, float], tuple[float, float, float, float]]] = None
    re_prob: Optional[float] = None
    re_count: Optional[int] = None
    use_timm: bool = False
    color_jitter_prob: Optional[float] = None
    gray_scale_prob: Optional[float] = None


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    """Kept for API compatibility with OpenCLIP; the pipelines use `MaybeConvertMode`."""
    return image.convert("RGB")


def _expand_stat(value: Any, default: tuple[float, ...]) -> Any:
    # Quirk kept from 3.3: any falsy value (0, ()) silently means the default.
    value = value or default
    if not isinstance(value, (list, tuple)):
        value = (value,) * 3
    return value


def image_transform(
    image_size: Union[int, tuple[int, int]],
    is_train: bool,
    mean: Optional[tuple[float, ...]] = None,
    std: Optional[tuple[float, ...]] = None,
    resize_mode: Optional[str] = None,
    interpolation: Optional[str] = None,
    fill_color: int = 0,
    aug_cfg: Optional[Union[dict[str, Any], AugmentationCfg]] = None,
):
    """Build the preprocessing pipeline for images of `image_size` (int or (H, W)).

    Args:
        image_size: output size; an int means square.
        is_train: training augmentation (random resized crop, optional jitter) or eval resize/crop.
        mean, std: per-channel normalisation (a scalar is repeated; default: OpenAI's).
        resize_mode: eval only: 'shortest' (resize + centre crop), 'longest' (fit + pad with
            `fill_color`) or 'squash' (resize to exactly `image_size`). Default 'shortest'.
        interpolation: 'bicubic' (default), 'bilinear' or 'random' (bicubic at eval).
        fill_color: padding value for 'longest'.
        aug_cfg: `AugmentationCfg` or a dict of its fields (training only).

    Returns:
        A callable mapping a PIL image (any common mode) to a float tensor (3, H, W); a torchvision
        `Compose`, or timm's transform when `aug_cfg.use_timm` is set for training.
    """
    mean = _expand_stat(mean, OPENAI_DATASET_MEAN)
    std = _expand_stat(std, OPENAI_DATASET_STD)
    interpolation = interpolation or "bicubic"
    assert interpolation in _INTERPOLATIONS
    resize_mode = resize_mode or "shortest"
    assert resize_mode in _RESIZE_MODES
    if isinstance(aug_cfg, dict):
        aug_cfg = AugmentationCfg(**aug_cfg)
    else:
        aug_cfg = aug_cfg or AugmentationCfg()
    normalize = Normalize(mean=mean, std=std)
    if is_train:
        return _train_transform(image_size, mean, std, interpolation, aug_cfg, normalize)
    return _eval_transform(image_size, resize_mode, interpolation, fill_color, normalize)


def _eval_transform(
    image_size: Union[int, Sequence[int]],
    resize_mode: str,
    interpolation: str,
    fill_color: int,
    normalize: Normalize,
) -> CheckedCompose:
    interp = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    if resize_mode == "longest":
        steps = [
            ResizeKeepRatio(image_size, interpolation=interp, longest=1),
            CenterCropOrPad(image_size, fill=fill_color),
        ]
    elif resize_mode == "squash":
        size = (image_size, image_size) if isinstance(image_size, numbers.Number) else image_size
        steps = [Resize(size, interpolation=interp)]
    else:  # shortest
        if isinstance(image_size, (tuple, list)) and image_size[0] == image_size[-1]:
            image_size = image_size[0]
        if isinstance(image_size, (tuple, list)):
            # Quirk kept from 3.3: the non-square path always resizes bicubically, rounds
            # with Python's round(), and ignores `interpolation`.
            steps = [ResizeKeepRatio(image_size), CenterCrop(image_size)]
        else:
            # torchvision's shorter-side resize truncates the long side: 640x480 -> 298x224.
            steps = [Resize(image_size, interpolation=interp), CenterCrop(image_size)]
    return CheckedCompose(steps + [MaybeConvertMode(), MaybeToTensor(), normalize])


def _train_transform(
    image_size: Union[int, Sequence[int]],
    mean: Any,
    std: Any,
    interpolation: str,
    aug_cfg: AugmentationCfg,
    normalize: Normalize,
):
    aug = {k: v for k, v in asdict(aug_cfg).items() if v is not None}
    use_timm = aug.pop("use_timm", False)
    if use_timm:
        return _timm_train_transform(image_size, mean, std, interpolation, aug)

    steps = [
        RandomResizedCrop(image_size, scale=aug.pop("scale"), interpolation=InterpolationMode.BICUBIC),
        MaybeConvertMode(),
    ]
    if aug.get("color_jitter_prob"):
        jitter = aug.get("color_jitter")
        assert jitter is not None and len(jitter) == 4
        steps.append(color_jitter(*jitter, p=aug["color_jitter_prob"]))
    if aug.get("gray_scale_prob"):
        steps.append(gray_scale(aug["gray_scale_prob"]))
    steps += [MaybeToTensor(), normalize]
    if aug:
        # Quirk kept from 3.3: the jitter / grayscale keys are listed even though used above.
        warnings.warn(
            f"Unused augmentation cfg items, specify `use_timm` to use ({list(aug.keys())}).", stacklevel=3
        )
    return CheckedCompose(steps)


def _timm_train_transform(
    image_size: Union[int, Sequence[int]],
    mean: Any,
    std: Any,
    interpolation: str,
    aug: dict[str, Any],
):
    try:
        from timm.data import create_transform
    except ImportError as e:
        raise ImportError(
            "AugmentationCfg(use_timm=True) needs timm: `pip install libreclip[timm]`."
        ) from e
    if isinstance(image_size, (tuple, list)):
        input_size = (3,) + tuple(image_size[-2:])
    else:
        input_size = (3, image_size, image_size)
    aug.setdefault("color_jitter", None)  # timm would otherwise default to 0.4 jitter
    aug.pop("color_jitter_prob", None)
    aug.pop("gray_scale_prob", None)
    return create_transform(
        input_size=input_size,
        is_training=True,
        hflip=0.0,
        mean=mean,
        std=std,
        re_mode="pixel",
        interpolation=interpolation,
        **aug,
    )


def image_transform_v2(
    cfg: PreprocessCfg,
    is_train: bool,
    aug_cfg: Optional[Union[dict[str, Any], AugmentationCfg]] = None,
):
    """`image_transform` driven by a model's `PreprocessCfg` (what create_model_and_transforms uses)."""
    return image_transform(
        image_size=cfg.size,
        is_train=is_train,
        mean=cfg.mean,
        std=cfg.std,
        interpolation=cfg.interpolation,
        resize_mode=cfg.resize_mode,
        fill_color=cfg.fill_color,
        aug_cfg=aug_cfg,
    )
