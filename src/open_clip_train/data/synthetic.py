"""Synthetic data (one black image, one caption): :class:`SyntheticDataset` and ``get_synthetic_dataset``.

Fixes 3.3's val path: an int transform size is normalised to a square, a missing sample count falls
back to a default, and no transform yields float tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

from .csv_dataset import loader_settings
from .info import DataInfo
from .map_loader import build_map_loader
from .samples import make_pair

DEFAULT_SYNTHETIC_SIZE = 100
DEFAULT_IMAGE_SIZE = (224, 224)


def _as_size(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(size)
    if len(size) == 1:
        return (size[0], size[0])
    return (size[0], size[1])


class SyntheticDataset(Dataset):
    """``dataset_size`` copies of ``(transform(black image), tokenizer(caption)[0])``."""

    def __init__(
        self,
        transform: Callable | None = None,
        image_size: Any = DEFAULT_IMAGE_SIZE,
        caption: str = "Dummy caption",
        dataset_size: int = DEFAULT_SYNTHETIC_SIZE,
        tokenizer: Callable | None = None,
    ) -> None:
        self.transform = transform if transform is not None else to_tensor
        self.image = Image.new("RGB", _as_size(image_size))
        self.caption = caption
        self.dataset_size = dataset_size
        self.preprocess_txt = tokenizer

    def __len__(self) -> int:
        return self.dataset_size

    def load_sample(self, idx: int) -> tuple[Any, Any]:
        if not 0 <= idx < self.dataset_size:
            raise IndexError(f"index {idx} out of range for {self.dataset_size} synthetic samples")
        return make_pair(
            self.image, self.caption, self.transform, self.preprocess_txt, f"synthetic {idx}", caption_as_list=False
        )

    def __getitem__(self, idx: int) -> tuple[Any, Any]:
        return self.load_sample(idx)


def transform_image_size(preprocess_fn: Any) -> tuple[int, int]:
    """The output size of a torchvision ``Compose`` whose first step has ``.size`` (else 224x224)."""
    steps = getattr(preprocess_fn, "transforms", None)
    size = getattr(steps[0], "size", None) if steps else None
    return _as_size(size) if size is not None else DEFAULT_IMAGE_SIZE


def build_synthetic_loader(
    preprocess: Callable | None,
    *,
    num_samples: int | None = None,
    tokenizer: Callable | None = None,
    **loader_kwargs: Any,
) -> DataInfo:
    """A resumable synthetic loader; ``loader_kwargs`` go to :func:`map_loader.build_map_loader`."""
    dataset = SyntheticDataset(
        transform=preprocess,
        image_size=transform_image_size(preprocess),
        dataset_size=num_samples if num_samples is not None else DEFAULT_SYNTHETIC_SIZE,
        tokenizer=tokenizer,
    )
    return build_map_loader(dataset, description="synthetic data", **loader_kwargs)


def get_synthetic_dataset(
    args: Any, preprocess_fn: Callable | None, is_train: bool, epoch: int = 0, tokenizer: Callable | None = None
) -> DataInfo:
    """3.3's namespace adapter; size = ``--train-num-samples`` (val: ``--val-num-samples`` first)."""
    num = getattr(args, "train_num_samples", None)
    if not is_train:
        num = getattr(args, "val_num_samples", None) or num
    return build_synthetic_loader(
        preprocess_fn, num_samples=num, tokenizer=tokenizer, **loader_settings(args, is_train, epoch)
    )
