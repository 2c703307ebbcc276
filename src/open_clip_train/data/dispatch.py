"""``get_data``: the namespace adapter the training app calls, and dataset-type dispatch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .csv_dataset import get_csv_dataset
from .imagefolder_captions import get_imagefolder_caption_dataset
from .imagenet_folder import get_imagenet
from .info import DataInfo
from .synthetic import get_synthetic_dataset
from .webdataset_pipeline import get_wds_dataset

DATASET_TYPES = ("webdataset", "csv", "synthetic", "auto", "imagefolder")


def get_dataset_fn(data_path: str | None, dataset_type: str) -> Callable:
    """The builder for ``dataset_type``; ``auto`` picks by extension (csv/tsv -> CSV, tar -> WebDataset)."""
    if dataset_type == "webdataset":
        return get_wds_dataset
    if dataset_type == "csv":
        return get_csv_dataset
    if dataset_type == "synthetic":
        return get_synthetic_dataset
    if dataset_type == "imagefolder":
        return get_imagefolder_caption_dataset
    if dataset_type == "auto":
        ext = (data_path or "").split(".")[-1]
        if ext in ("csv", "tsv"):
            return get_csv_dataset
        if ext == "tar":
            return get_wds_dataset
        raise ValueError(
            f"Tried to figure out dataset type, but failed for extension {ext}. "
            "Use --dataset-type webdataset|csv|synthetic."
        )
    raise ValueError(f"Unsupported dataset type: {dataset_type}. Valid types: {', '.join(DATASET_TYPES)}")


def get_data(
    args: Any, preprocess_fns: tuple, epoch: int = 0, tokenizer: Callable | None = None
) -> dict[str, DataInfo]:
    """Build the loaders named by ``args``: keys ``train``, ``val``, ``imagenet-val``, ``imagenet-v2``.

    ``preprocess_fns`` is ``(preprocess_train, preprocess_val)``. ``train`` exists when
    ``--train-data`` is set or the type is synthetic; ``val`` when ``--val-data`` is set.
    """
    preprocess_train, preprocess_val = preprocess_fns
    dataset_type = getattr(args, "dataset_type", "auto")
    data: dict[str, DataInfo] = {}
    if getattr(args, "train_data", None) or dataset_type == "synthetic":
        data["train"] = get_dataset_fn(args.train_data, dataset_type)(
            args, preprocess_train, is_train=True, epoch=epoch, tokenizer=tokenizer
        )
    if getattr(args, "val_data", None):
        data["val"] = get_dataset_fn(args.val_data, dataset_type)(
            args, preprocess_val, is_train=False, tokenizer=tokenizer
        )
    if getattr(args, "imagenet_val", None) is not None:
        data["imagenet-val"] = get_imagenet(args, preprocess_fns, "val")
    if getattr(args, "imagenet_v2", None) is not None:
        data["imagenet-v2"] = get_imagenet(args, preprocess_fns, "v2")
    return data
