"""Labelled image folders: ``--imagenet-val`` (class folders, ImageFolder order), ``--imagenet-v2``
(folders named by class index, ImageNetV2's layout), and the ``(path, label)`` dataset the fine-tuning
loaders share with them."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .info import DataInfo

_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".webp", ".bmp"}
IMAGENET_V2_VARIANT_DIR = "ImageNetV2-matched-frequency"


class LabelledImages(Dataset):
    """``(transform(image), label)`` for a list of ``(path, label)`` pairs, decoded to RGB."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable | None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[Any, int]:
        path, label = self.samples[idx]
        with Image.open(path) as img:
            image = img.convert("RGB")
        return (self.transform(image) if self.transform is not None else image), label


class IndexFolderDataset(LabelledImages):
    """Images under ``root/<class index>/...``; the label is the integer folder name (0..999).

    Unlike ``ImageFolder`` (which sorts folder names as strings: 0, 1, 10, 100...) this keeps
    ImageNetV2's meaning of the folder names. Accepts ``root`` itself or ``root/ImageNetV2-matched-frequency``.
    """

    def __init__(self, root: str, transform: Callable | None = None) -> None:
        base = pathlib.Path(root)
        if (base / IMAGENET_V2_VARIANT_DIR).is_dir():
            base = base / IMAGENET_V2_VARIANT_DIR
        if not base.is_dir():
            raise FileNotFoundError(f"ImageNetV2 folder {root!r} does not exist")
        samples = sorted(
            (str(p), int(p.parent.name))
            for p in base.glob("*/*")
            if p.suffix.lower() in _IMAGE_SUFFIXES and p.parent.name.isdigit()
        )
        if not samples:
            raise FileNotFoundError(f"No images in class-index folders (e.g. {base}/0/*.jpeg) under {root!r}")
        super().__init__(samples, transform)


def build_imagenet_loader(
    root: str, preprocess: Callable | None, *, v2: bool = False, batch_size: int = 64, workers: int = 4
) -> DataInfo:
    """Evaluation loader over an ImageNet folder (``v2``: class-index folders), no shuffling."""
    if v2:
        dataset: Dataset = IndexFolderDataset(root, transform=preprocess)
    else:
        from torchvision.datasets import ImageFolder

        dataset = ImageFolder(root, transform=preprocess)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, sampler=None)
    loader.num_samples = len(dataset)
    loader.num_batches = len(loader)
    return DataInfo(dataloader=loader, sampler=None)


def get_imagenet(args: Any, preprocess_fns: tuple, split: str) -> DataInfo:
    """3.3's adapter: ``split`` is ``"val"`` (``args.imagenet_val``) or ``"v2"`` (``args.imagenet_v2``)."""
    assert split in ("train", "val", "v2"), f"split must be train, val or v2, got {split!r}"
    if split == "train":
        raise ValueError("ImageNet train split is not supported (3.3 has no --imagenet-train flag either)")
    _, preprocess_val = preprocess_fns
    root = args.imagenet_v2 if split == "v2" else args.imagenet_val
    return build_imagenet_loader(
        root, preprocess_val, v2=split == "v2", batch_size=args.batch_size, workers=args.workers
    )
