"""The individual image operations the preprocessing pipelines are composed of.

`transform.py` decides *which* steps run in which order; this module owns the steps that
torchvision does not provide: aspect-keeping resize, centre crop-or-pad, lazy mode conversion,
tensor pass-through, probabilistic colour jitter / grayscale, and the input check that runs
before everything else. Pixel arithmetic is always delegated to torchvision's functional ops
(and through them to PIL), so results match OpenCLIP 3.3 bit for bit.
"""

import numbers
import random
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import ColorJitter, Compose, Grayscale, InterpolationMode

__all__ = [
    "CheckedCompose",
    "CenterCropOrPad",
    "MaybeConvertMode",
    "MaybeToTensor",
    "ResizeKeepRatio",
    "center_crop_or_pad",
    "check_image",
    "color_jitter",
    "gray_scale",
]


def check_image(img: Any) -> None:
    """Reject inputs no pipeline step can handle, with an error that names the problem.

    Accepts PIL images and tensors (..., H, W). Raises TypeError for anything else (numpy arrays
    included, as in OpenCLIP), ValueError for an image with a zero-length side. A PIL image whose
    file is truncated raises PIL's own OSError here, when its pixels are first decoded.
    """
    if isinstance(img, Image.Image):
        width, height = img.size
        if width == 0 or height == 0:
            raise ValueError(f"Image has zero size (width={width}, height={height}); need at least 1x1.")
        try:
            img.load()  # decode now so a damaged file fails here, naming the file
        except OSError as e:
            name = getattr(img, "filename", "") or "<in-memory image>"
            raise OSError(f"Could not decode image {name!r}: {e}") from e
        return
    if isinstance(img, torch.Tensor):
        if img.ndim < 2 or img.numel() == 0:
            raise ValueError(
                f"Image tensor of shape {tuple(img.shape)} has no pixels; expected (C, H, W) with H, W >= 1."
            )
        return
    hint = " (wrap numpy arrays with PIL.Image.fromarray)" if isinstance(img, np.ndarray) else ""
    raise TypeError(f"Expected a PIL.Image.Image or a torch.Tensor, got {type(img).__name__}{hint}.")


class CheckedCompose(Compose):
    """torchvision `Compose` that validates the image (see `check_image`) right before the step it
    was built with as its first one.

    It is a `Compose` subclass with the same `.transforms` list, so code that indexes or edits the
    steps keeps working: steps a user inserts in front (e.g. `transforms.insert(0, ToPILImage())`
    to feed numpy arrays, as works in 3.3) run first, and the check applies to what they produce.
    """

    # Pipelines pickled before this attribute existed check before whatever step comes first.
    _checked_step: Any = None

    def __init__(self, transforms: Sequence[Any]):
        super().__init__(transforms)
        self._checked_step = self.transforms[0] if self.transforms else None

    def __call__(self, img: Any) -> Any:
        checked = self._checked_step
        for position, step in enumerate(self.transforms):
            if step is checked or (checked is None and position == 0):
                check_image(img)
            img = step(img)
        return img


def _image_hw(img: Any) -> tuple[int, int]:
    """(height, width) of a PIL image or tensor; works on every input `check_image` admits."""
    _, height, width = F.get_dimensions(img)
    return height, width


class ResizeKeepRatio:
    """Resize so the image fits (longest=1) or covers (longest=0) `size`, keeping its aspect ratio.

    `longest` may be fractional to blend the two ratios. Optional random scale / aspect jitter
    (drawn with Python's `random`) exists for training-style use; it is off by default.
    """

    def __init__(
        self,
        size: Union[int, Sequence[int]],
        longest: float = 0.0,
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
        random_scale_prob: float = 0.0,
        random_scale_range: tuple[float, float] = (0.85, 1.05),
        random_aspect_prob: float = 0.0,
        random_aspect_range: tuple[float, float] = (0.9, 1.11),
    ):
        self.size = (size, size) if isinstance(size, numbers.Number) else size
        self.interpolation = interpolation
        self.longest = float(longest)
        self.random_scale_prob = random_scale_prob
        self.random_scale_range = random_scale_range
        self.random_aspect_prob = random_aspect_prob
        self.random_aspect_range = random_aspect_range

    @staticmethod
    def get_params(
        img: Any,
        target_size: Sequence[int],
        longest: float,
        random_scale_prob: float = 0.0,
        random_scale_range: tuple[float, float] = (0.85, 1.05),
        random_aspect_prob: float = 0.0,
        random_aspect_range: tuple[float, float] = (0.9, 1.11),
    ) -> list[int]:
        """Output [height, width] for `img`. Uses Python `round` (half to even), as 3.3 does."""
        source_size = _image_hw(img)
        ratio_h, ratio_w = (s / t for s, t in zip(source_size, target_size))
        ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
        factor_h = factor_w = 1.0
        if random_scale_prob > 0 and random.random() < random_scale_prob:
            factor_h = factor_w = random.uniform(*random_scale_range)
        if random_aspect_prob > 0 and random.random() < random_aspect_prob:
            aspect = random.uniform(*random_aspect_range)
            factor_h, factor_w = factor_h / aspect, factor_w * aspect
        return [round(source_size[0] * factor_h / ratio), round(source_size[1] * factor_w / ratio)]

    def __call__(self, img: Any) -> Any:
        size = self.get_params(
            img, self.size, self.longest,
            self.random_scale_prob, self.random_scale_range,
            self.random_aspect_prob, self.random_aspect_range,
        )
        return F.resize(img, size, self.interpolation)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(size={self.size}, interpolation={self.interpolation}, "
            f"longest={self.longest:.3f})"
        )


def _setup_size(size: Union[int, Sequence[int]], error_msg: str) -> tuple[int, int]:
    if isinstance(size, numbers.Number):
        return int(size), int(size)
    if isinstance(size, Sequence) and len(size) == 1:
        return size[0], size[0]
    if len(size) != 2:
        raise ValueError(error_msg)
    return size[0], size[1]


def center_crop_or_pad(img: Any, output_size: Union[int, Sequence[int]], fill: Any = 0) -> Any:
    """Centre-crop `img` to `output_size` (h, w), padding with `fill` first where it is smaller.

    Padding splits the deficit evenly, the odd pixel going right/bottom; the crop offset is
    `round((H - h) / 2)` (half to even), matching torchvision's `CenterCrop`.
    """
    if isinstance(output_size, numbers.Number):
        output_size = (int(output_size), int(output_size))
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 1:
        output_size = (output_size[0], output_size[0])
    crop_h, crop_w = output_size
    height, width = _image_hw(img)
    if crop_w > width or crop_h > height:
        pad_w, pad_h = max(crop_w - width, 0), max(crop_h - height, 0)
        padding_ltrb = [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2]
        img = F.pad(img, padding_ltrb, fill=fill)
        height, width = _image_hw(img)
        if (crop_h, crop_w) == (height, width):
            return img
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return F.crop(img, top, left, crop_h, crop_w)


class CenterCropOrPad(torch.nn.Module):
    """Module form of `center_crop_or_pad`: pad with `fill` where needed, then centre-crop."""

    def __init__(self, size: Union[int, Sequence[int]], fill: Any = 0):
        super().__init__()
        self.size = _setup_size(size, error_msg="Please provide only two dimensions (h, w) for size.")
        self.fill = fill

    def forward(self, img: Any) -> Any:
        return center_crop_or_pad(img, self.size, fill=self.fill)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(size={self.size})"


class MaybeConvertMode(torch.nn.Module):
    """Convert a PIL image to `mode` (default RGB); tensors and numpy arrays pass through."""

    def __init__(self, mode: str = "RGB"):
        super().__init__()
        self.mode = mode

    def forward(self, pic: Any) -> Any:
        if isinstance(pic, (torch.Tensor, np.ndarray)):
            return pic
        return pic.convert(self.mode)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mode={self.mode})"


class MaybeToTensor(torch.nn.Module):
    """`to_tensor` for PIL images (uint8 HWC -> float CHW in [0, 1]); tensors pass unchanged."""

    def forward(self, pic: Any) -> torch.Tensor:
        if isinstance(pic, torch.Tensor):
            return pic
        return F.to_tensor(pic)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


def _check_prob(p: float) -> None:
    assert 0.0 <= p <= 1.0, f"probability must be in [0, 1], got {p}"


class color_jitter:  # noqa: N801 - the lowercase class name is OpenCLIP's public name
    """Apply torchvision `ColorJitter(b, c, s, h)` with probability `p` (Python `random`)."""

    def __init__(self, brightness: Any = 0.0, contrast: Any = 0.0, saturation: Any = 0.0,
                 hue: Any = 0.0, p: float = 0.8):
        _check_prob(p)
        self.p = p
        self.transf = ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)

    def __call__(self, img: Any) -> Any:
        if random.random() < self.p:
            return self.transf(img)
        return img

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, {self.transf!r})"


class gray_scale:  # noqa: N801 - the lowercase class name is OpenCLIP's public name
    """Apply torchvision `Grayscale(num_output_channels=3)` with probability `p` (Python `random`)."""

    def __init__(self, p: float = 0.2):
        _check_prob(p)
        self.p = p
        self.transf = Grayscale(num_output_channels=3)

    def __call__(self, img: Any) -> Any:
        if random.random() < self.p:
            return self.transf(img)
        return img

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p})"
