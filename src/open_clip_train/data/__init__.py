"""Training data for ``open_clip_train``: CSV, WebDataset and synthetic loaders that skip and count
bad samples, never hang, and resume exactly mid-epoch (``DataInfo.state_dict``/``load_state_dict``).

3.3's names (``get_data``, ``DataInfo``, ``SharedEpoch``, ``get_dataset_size``, ``get_wds_dataset``,
``get_csv_dataset``, ``get_synthetic_dataset``, ``CsvDataset``, ``SyntheticDataset``, ``expand_urls``,
``get_imagenet``...) are importable from here; the ``build_*_loader`` functions take explicit settings.
"""

from open_clip.optional_modules import optional_module_attributes

from .bad_samples import (
    BAD_SAMPLE_KINDS,
    CAPTION_ENCODING_ERROR,
    CSV_ROW_ERROR,
    DEFAULT_MAX_BAD_FRACTION,
    EMPTY_MEMBER,
    IMAGE_DECODE_ERROR,
    MISSING_CAPTION,
    MISSING_IMAGE,
    TAR_READ_ERROR,
    TRANSFORM_ERROR,
    BadSample,
    DataQualityError,
    check_bad_fraction,
)
from .csv_dataset import CsvDataset, build_csv_loader, get_csv_dataset
from .dispatch import get_data, get_dataset_fn
from .imagenet_folder import IndexFolderDataset, build_imagenet_loader, get_imagenet
from .info import DataInfo, SharedEpoch
from .map_loader import EpochBatchSampler, build_map_loader
from .resumable import ResumableLoader, buffered_shuffle, derive_seed, sample_rng
from .synthetic import SyntheticDataset, build_synthetic_loader, get_synthetic_dataset
from .wds_compat import (
    ResampledShards2,
    count_samples,
    detshuffle2,
    group_by_keys_nothrow,
    log_and_continue,
    pytorch_worker_seed,
    tarfile_to_samples_nothrow,
)
from .wds_shards import expand_urls, get_dataset_size, iter_shard_samples
from .webdataset_pipeline import (
    _SAMPLE_SHUFFLE_INITIAL,
    _SAMPLE_SHUFFLE_SIZE,
    _SHARD_SHUFFLE_INITIAL,
    _SHARD_SHUFFLE_SIZE,
    WdsStream,
    build_wds_loader,
    filter_no_caption_or_no_image,
    get_wds_dataset,
)

# `hvd`: horovod.torch or None, as 3.3 exposed it here (imported on first read).
__getattr__, __dir__ = optional_module_attributes(__name__, {"hvd": "horovod.torch"})

__all__ = [
    "BAD_SAMPLE_KINDS",
    "CAPTION_ENCODING_ERROR",
    "CSV_ROW_ERROR",
    "DEFAULT_MAX_BAD_FRACTION",
    "EMPTY_MEMBER",
    "IMAGE_DECODE_ERROR",
    "MISSING_CAPTION",
    "MISSING_IMAGE",
    "TAR_READ_ERROR",
    "TRANSFORM_ERROR",
    "BadSample",
    "CsvDataset",
    "DataInfo",
    "DataQualityError",
    "EpochBatchSampler",
    "IndexFolderDataset",
    "ResumableLoader",
    "SharedEpoch",
    "SyntheticDataset",
    "ResampledShards2",
    "WdsStream",
    "_SAMPLE_SHUFFLE_INITIAL",
    "_SAMPLE_SHUFFLE_SIZE",
    "_SHARD_SHUFFLE_INITIAL",
    "_SHARD_SHUFFLE_SIZE",
    "buffered_shuffle",
    "build_csv_loader",
    "build_imagenet_loader",
    "build_map_loader",
    "build_synthetic_loader",
    "build_wds_loader",
    "check_bad_fraction",
    "count_samples",
    "detshuffle2",
    "group_by_keys_nothrow",
    "pytorch_worker_seed",
    "tarfile_to_samples_nothrow",
    "derive_seed",
    "expand_urls",
    "filter_no_caption_or_no_image",
    "get_csv_dataset",
    "get_data",
    "get_dataset_fn",
    "get_dataset_size",
    "get_imagenet",
    "get_synthetic_dataset",
    "get_wds_dataset",
    "iter_shard_samples",
    "log_and_continue",
    "sample_rng",
]
