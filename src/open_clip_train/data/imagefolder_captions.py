"""``--dataset-type imagefolder``: a class-per-folder image dataset read as image-caption pairs.

Each image's caption is its class name put into a template drawn at random for that sample (FLYP-style
contrastive fine-tuning: the classification data is trained with the pre-training loss). The draw is
seeded per sample by the loader, so an epoch's captions are reproducible and resume exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset

from .class_folders import Template, class_folders, fill_template, labelled_images, read_classnames, read_templates
from .csv_dataset import loader_settings
from .info import DataInfo
from .map_loader import build_map_loader
from .samples import image_from_path, make_pair


class ImageFolderCaptions(Dataset):
    """Images under ``root/<class>/`` with captions ``template(class name)``, one random template per sample.

    ``classnames[i]`` is the name of label ``i``; ``samples`` are ``(path, label)`` pairs. Plugged into the
    resumable loaders through :meth:`load_sample`.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classnames: Sequence[str],
        templates: Sequence[Template],
        transform: Callable | None = None,
        tokenizer: Callable | None = None,
    ) -> None:
        if not templates:
            raise ValueError("ImageFolderCaptions needs at least one template")
        self.samples = list(samples)
        self.classnames = list(classnames)
        self.templates = list(templates)
        self.transform = transform
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.samples)

    def caption(self, label: int) -> str:
        # `random` is seeded per sample by the loader (map_loader.SafeSamples), so this draw is reproducible.
        return fill_template(self.templates[random.randrange(len(self.templates))], self.classnames[label])

    def load_sample(self, idx: int) -> tuple[Any, Any]:
        path, label = self.samples[idx]
        return make_pair(image_from_path(path), self.caption(label), self.transform, self.tokenizer, path)

    def __getitem__(self, idx: int) -> tuple[Any, Any]:
        return self.load_sample(idx)


def build_imagefolder_caption_loader(
    root: str,
    preprocess: Callable | None,
    *,
    class_root: str | None = None,
    classnames_file: str | None = None,
    templates_file: str | None = None,
    tokenizer: Callable | None = None,
    flag: str = "--train-data",
    **loader_kwargs: Any,
) -> DataInfo:
    """A resumable caption loader over ``root``; classes (and their order) come from ``class_root`` (default ``root``).

    ``loader_kwargs`` go to :func:`map_loader.build_map_loader`.
    """
    folders = class_folders(class_root or root, flag)
    samples = labelled_images(root, folders, flag)
    dataset = ImageFolderCaptions(samples, read_classnames(classnames_file, folders), read_templates(templates_file),
                                  transform=preprocess, tokenizer=tokenizer)
    return build_map_loader(dataset, description=root, **loader_kwargs)


def get_imagefolder_caption_dataset(
    args: Any, preprocess_fn: Callable, is_train: bool, epoch: int = 0, tokenizer: Callable | None = None
) -> DataInfo:
    """The training app's adapter: ``args.train_data`` / ``args.val_data`` with ``--classnames`` / ``--templates``.

    Validation folders are labelled with the training folder's classes when both are given.
    """
    root = args.train_data if is_train else args.val_data
    flag = "--train-data" if is_train else "--val-data"
    if not root:
        raise ValueError(f"{flag}: --dataset-type imagefolder needs a folder with one sub-folder per class")
    return build_imagefolder_caption_loader(
        root,
        preprocess_fn,
        class_root=getattr(args, "train_data", None) or root,
        classnames_file=getattr(args, "classnames", None),
        templates_file=getattr(args, "templates", None),
        tokenizer=tokenizer,
        flag=flag,
        **loader_settings(args, is_train, epoch),
    )
