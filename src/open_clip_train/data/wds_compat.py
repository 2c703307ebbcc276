"""3.3's public WebDataset pipeline stages, kept for code that composes its own ``wds.DataPipeline``.

Our loaders (``webdataset_pipeline``) do not use these: they need a deterministic, resumable order.
They behave as 3.3's ``data.py`` stages of the same names; they import ``webdataset`` lazily.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from .info import SharedEpoch
from .wds_shards import expand_urls, import_webdataset


def _base_plus_ext(path: str) -> tuple:
    return import_webdataset().tariterators.base_plus_ext(path)


def group_by_keys_nothrow(
    data: Iterable[dict],
    keys: Callable = _base_plus_ext,
    lcase: bool = True,
    suffixes: set | None = None,
    handler: Callable | None = None,
) -> Iterator[dict]:
    """Group ``{"fname", "data", "__url__"}`` tar members into samples by key prefix.

    A new sample starts when the prefix changes or a suffix repeats (webdataset would raise on the
    repeat) or at a shard's end marker; only samples with ``__key__`` and ``__url__`` are yielded.
    """
    current: dict | None = None
    for filesample in data:
        if not filesample or "fname" not in filesample:
            # webdataset 1.x marks the end of each shard with an empty dict: finish the sample there
            if current is not None and "__key__" in current and "__url__" in current:
                yield current
            current = None
            continue
        fname, value = filesample["fname"], filesample["data"]
        prefix, suffix = keys(fname)
        if prefix is None:
            continue
        if lcase:
            suffix = suffix.lower()
        if current is None or prefix != current["__key__"] or suffix in current:
            if current is not None and "__key__" in current and "__url__" in current:
                yield current
            current = {"__key__": prefix, "__url__": filesample["__url__"]}
        if suffixes is None or suffix in suffixes:
            current[suffix] = value
    if current is not None and "__key__" in current and "__url__" in current:
        yield current


def log_and_continue(exn: BaseException) -> bool:
    """Log a webdataset error as a warning and keep going (3.3's handler)."""
    logging.warning(f"Handling webdataset error ({exn!r}). Ignoring.")
    return True


def tarfile_to_samples_nothrow(src: Iterable[dict], handler: Callable = log_and_continue) -> Iterator[dict]:
    """``url_opener`` -> ``tar_file_expander`` -> :func:`group_by_keys_nothrow`."""
    wds = import_webdataset()
    streams = wds.tariterators.url_opener(src, handler=handler)
    files = wds.tariterators.tar_file_expander(streams, handler=handler)
    return group_by_keys_nothrow(files, handler=handler)


def pytorch_worker_seed(increment: int = 0) -> int:
    """In a dataloader worker: its seed (+ ``increment * num_workers``); outside: a rank-based seed."""
    info = get_worker_info()
    if info is not None:
        seed = info.seed
        if increment:
            seed += increment * max(1, info.num_workers)
        return seed
    return import_webdataset().utils.pytorch_worker_seed()


def _buffer_shuffle(items: Iterable, bufsize: int, initial: int, rng: random.Random) -> Iterator:
    from .resumable import buffered_shuffle

    return buffered_shuffle(items, bufsize, initial, rng)


class detshuffle2:  # noqa: N801 - 3.3's name
    """Pipeline stage: deterministic buffered shuffle seeded by ``seed + epoch`` (or the worker seed)."""

    def __init__(self, bufsize: int = 1000, initial: int = 100, seed: int = 0, epoch: Any = -1) -> None:
        self.bufsize, self.initial, self.seed, self.epoch = bufsize, initial, seed, epoch

    def run(self, src: Iterable) -> Iterator:
        if isinstance(self.epoch, SharedEpoch):
            epoch = self.epoch.get_value()
        else:
            self.epoch += 1  # no shared epoch: count calls
            epoch = self.epoch
        seed = pytorch_worker_seed(epoch) if self.seed < 0 else self.seed + epoch
        return _buffer_shuffle(src, self.bufsize, self.initial, random.Random(seed))

    def __call__(self, src: Iterable) -> Iterator:
        return self.run(src)


class ResampledShards2(IterableDataset):
    """Yields ``dict(url=...)`` ``nshards`` times, drawn with replacement (optionally weighted)."""

    def __init__(
        self,
        urls: Any,
        weights: Any = None,
        nshards: int = sys.maxsize,
        worker_seed: Callable | None = None,
        deterministic: bool = False,
        epoch: Any = -1,
    ) -> None:
        super().__init__()
        urls, weights = expand_urls(urls, weights)
        self.urls, self.weights = urls, weights
        if self.weights is not None:
            assert len(self.urls) == len(self.weights), (
                f"Number of urls {len(self.urls)} and weights {len(self.weights)} should match."
            )
        assert isinstance(self.urls[0], str)
        self.nshards = nshards
        self.rng = random.Random()
        self.worker_seed = worker_seed
        self.deterministic = deterministic
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        if isinstance(self.epoch, SharedEpoch):
            epoch = self.epoch.get_value()
        else:
            self.epoch += 1
            epoch = self.epoch
        if self.deterministic:
            seed = pytorch_worker_seed(epoch) if self.worker_seed is None else self.worker_seed() + epoch
            self.rng.seed(seed)
        for _ in range(self.nshards):
            if self.weights is None:
                yield dict(url=self.rng.choice(self.urls))
            else:
                yield dict(url=self.rng.choices(self.urls, weights=self.weights, k=1)[0])


def count_samples(dataloader: Iterable) -> tuple[int, int]:
    """(number of samples, number of batches) in one pass over ``dataloader``."""
    os.environ["WDS_EPOCH"] = "0"
    n_elements, n_batches = 0, 0
    for images, _ in dataloader:
        n_batches += 1
        n_elements += len(images)
    return n_elements, n_batches
