"""Resumable loaders for map-style datasets (CSV, synthetic).

Owns :class:`EpochBatchSampler` (the epoch's sample order as a pure function of seed, epoch, rank and
world size), :class:`SafeSamples` (turns a failing sample into a counted skip and seeds its
augmentation) and :func:`build_map_loader`.

A dataset plugged in here implements ``__len__`` and ``load_sample(index) -> (image, text)``, raising
``BadSample(kind)`` for data it must skip.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .bad_samples import DEFAULT_MAX_BAD_FRACTION, TRANSFORM_ERROR, BadSample, Skip, log_skip
from .info import DataInfo, SharedEpoch
from .resumable import ResumableLoader, _loader_generator, collate_with_meta, derive_seed, sample_rng


class EpochBatchSampler:
    """Yields batches of ``(index, sample_seed)`` for one epoch, optionally starting mid-epoch.

    Order: a ``randperm`` seeded from (seed, epoch) when shuffling, else ``0..n-1``; with
    ``world_size > 1`` the order is padded by wrapping to a multiple of the world size (like
    ``DistributedSampler``) and rank ``r`` takes every ``world_size``-th index from ``r``.
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        shared_epoch: SharedEpoch,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.shared_epoch = shared_epoch
        self.rank = rank
        self.world_size = world_size
        self._start: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.shared_epoch.set_value(epoch)

    def prepare_epoch(self, epoch: int, start_batch: int, streams: dict) -> None:
        """Make the next ``__iter__`` produce ``epoch`` from batch ``start_batch`` on."""
        self._start = (epoch, start_batch)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's sample indices for ``epoch``, in order (a pure function of the settings)."""
        n = self.dataset_len
        if self.shuffle:
            gen = torch.Generator()
            gen.manual_seed(derive_seed("order", self.seed, epoch))
            order = torch.randperm(n, generator=gen).tolist()
        else:
            order = list(range(n))
        if self.world_size > 1 and n:
            total = math.ceil(n / self.world_size) * self.world_size
            order = (order * math.ceil(total / n))[:total]
            order = order[self.rank :: self.world_size]
        return order

    def _rank_len(self) -> int:
        if self.world_size > 1:
            return math.ceil(self.dataset_len / self.world_size)
        return self.dataset_len

    def __len__(self) -> int:
        n = self._rank_len()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        epoch, start = self._start if self._start is not None else (self.shared_epoch.get_value(), 0)
        self._start = None
        order = self.epoch_indices(epoch)
        bs = self.batch_size
        for b in range(start, len(self)):
            yield [(i, derive_seed("sample", self.seed, epoch, i)) for i in order[b * bs : (b + 1) * bs]]


class SafeSamples(Dataset):
    """Loads ``(index, seed)`` refs from a dataset with ``load_sample``; failures become :class:`Skip`."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, ref: tuple[int, int]) -> Any:
        index, seed = ref
        try:
            with sample_rng(seed):
                return self.dataset.load_sample(index)
        except BadSample as exc:
            log_skip(exc.kind, f"item {index}: {exc.detail}")
            return Skip(exc.kind, exc.detail)
        except Exception as exc:  # a transform or tokenizer failing on this sample only
            log_skip(TRANSFORM_ERROR, f"item {index}: {exc!r}")
            return Skip(TRANSFORM_ERROR, repr(exc))


def collate_map_batch(items: list) -> tuple:
    """Collate the good samples of a batch; count the skipped ones in the batch metadata."""
    good, bad = [], Counter()
    for item in items:
        if isinstance(item, Skip):
            bad[item.kind] += 1
        else:
            good.append(item)
    return collate_with_meta(good, {"consumed": 1, "good": len(good), "bad": dict(bad)})


def build_map_loader(
    dataset: Any,
    *,
    batch_size: int,
    workers: int,
    is_train: bool,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    distributed: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    fixed_bad: dict | None = None,
    description: str = "",
    pin_memory: bool = True,
    timeout: float = 0,
) -> DataInfo:
    """Wrap a map-style dataset into a resumable, skip-tolerant loader.

    Training shuffles (order from ``seed`` and the epoch) and drops the last partial batch; the split
    across ranks applies only when ``distributed`` and training (as in 3.3). Returns a ``DataInfo``
    whose ``sampler`` is the :class:`EpochBatchSampler` when distributed training, else ``None``.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    shared_epoch = SharedEpoch(epoch)
    split = distributed and is_train
    sampler = EpochBatchSampler(
        len(dataset),
        batch_size,
        shuffle=is_train,
        drop_last=is_train,
        seed=seed,
        shared_epoch=shared_epoch,
        rank=rank if split else 0,
        world_size=world_size if split else 1,
    )
    loader = DataLoader(
        SafeSamples(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate_map_batch,
        pin_memory=pin_memory and torch.cuda.is_available(),
        timeout=timeout,
        generator=_loader_generator(seed),
    )
    wrapped = ResumableLoader(
        loader,
        sampler,
        shared_epoch,
        num_batches=len(sampler),
        num_samples=len(dataset),
        kind="map",
        max_bad_fraction=max_bad_fraction,
        fixed_bad=fixed_bad,
        description=description,
        layout={"rank": sampler.rank, "world_size": sampler.world_size, "batch_size": batch_size},
    )
    return DataInfo(wrapped, sampler=sampler if split else None, shared_epoch=shared_epoch)
