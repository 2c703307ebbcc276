"""Resumable loaders for map-style datasets (CSV, synthetic).

Owns :class:`EpochBatchSampler` (the epoch's sample order as a pure function of seed, epoch, rank and
world size), :class:`SafeSamples` (turns a failing sample into a counted skip, refills training batches
and seeds each sample's augmentation) and :func:`build_map_loader`.

Training batches stay full: a bad sample is replaced by another sample drawn from the dataset with a
seed derived from the bad one's, so every rank contributes batches of the same size (the distributed
losses gather equal-sized tensors) and the replacement is the same after a resume. The bad-sample
fraction counts each sample of the epoch's order once: replacements and the few samples repeated to
pad the order across ranks are not counted.

A dataset plugged in here implements ``__len__`` and ``load_sample(index) -> (image, text)``, raising
``BadSample(kind)`` for data it must skip.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from . import progress
from .bad_samples import DEFAULT_MAX_BAD_FRACTION, TRANSFORM_ERROR, BadSample, DataQualityError, Skip, log_skip
from .info import DataInfo, SharedEpoch
from .resumable import ResumableLoader, _loader_generator, collate_with_meta, derive_seed, sample_rng


class EpochBatchSampler:
    """Yields batches of ``(index, sample_seed)`` for one epoch, optionally starting mid-epoch.

    Order: a ``randperm`` seeded from (seed, epoch) when shuffling, else ``0..n-1``; with
    ``world_size > 1`` the order is padded by wrapping to a multiple of the world size (like
    ``DistributedSampler``) and rank ``r`` takes every ``world_size``-th index from ``r``. Refs of the
    padding are ``(index, seed, False)``: they are loaded but not counted as good or bad.
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

    def _is_padding(self, position: int) -> bool:
        # position in this rank's order -> position in the padded global order
        return self.world_size > 1 and self.rank + position * self.world_size >= self.dataset_len

    def __iter__(self):
        epoch, start = self._start if self._start is not None else (self.shared_epoch.get_value(), 0)
        self._start = None
        order = self.epoch_indices(epoch)
        bs = self.batch_size
        for b in range(start, len(self)):
            refs = []
            for pos in range(b * bs, min((b + 1) * bs, len(order))):
                i = order[pos]
                ref = (i, derive_seed("sample", self.seed, epoch, i))
                refs.append(ref + (False,) if self._is_padding(pos) else ref)
            yield refs


# Draws tried to replace one bad training sample before the data is declared unusable.
MAX_REFILL_DRAWS = 64


class Loaded:
    """What :class:`SafeSamples` returns for one ref (picklable: crosses worker processes).

    ``pair`` is the sample to train on (None when skipped), ``bad`` the kind of the scheduled sample
    if it was bad (it may have been replaced), ``counted`` False for refs that must not be counted.
    """

    __slots__ = ("pair", "bad", "counted")

    def __init__(self, pair: Any, bad: Skip | None = None, counted: bool = True) -> None:
        self.pair, self.bad, self.counted = pair, bad, counted


class SafeSamples(Dataset):
    """Loads ``(index, seed[, counted])`` refs from a dataset with ``load_sample``.

    A failing sample becomes a counted skip; with ``refill`` it is replaced by a good sample drawn
    with seeds derived from the ref (so the batch keeps its size and a resume redraws the same one).
    """

    def __init__(self, dataset: Any, refill: bool = False, description: str = "") -> None:
        self.dataset = dataset
        self.refill = refill
        self.description = description

    def __len__(self) -> int:
        return len(self.dataset)

    def _source(self, index: int) -> tuple[str, str]:
        """``(what is read, the data source it belongs to)`` for item ``index``."""
        describe = getattr(self.dataset, "sample_source", None)
        if describe is not None:
            source = describe(index)
            return source, progress.source_key(source)
        name = self.description or type(self.dataset).__name__
        return f"{name} item {index}", name

    def _load(self, index: int, seed: int, log: bool = True) -> Any:
        """The sample, or a :class:`Skip` saying why it cannot be used."""
        source, key = self._source(index)
        progress.set_current(source)
        start = time.perf_counter()
        try:
            with sample_rng(seed):
                return self.dataset.load_sample(index)
        except BadSample as exc:
            kind, detail = exc.kind, exc.detail
        except Exception as exc:  # a transform or tokenizer failing on this sample only
            kind, detail = TRANSFORM_ERROR, repr(exc)
        finally:
            progress.add_time(key, time.perf_counter() - start)
        if log:
            log_skip(kind, f"item {index}: {detail}")
        return Skip(kind, detail)

    def __getitem__(self, ref: tuple) -> Loaded:
        index, seed = ref[0], ref[1]
        counted = ref[2] if len(ref) > 2 else True
        item = self._load(index, seed, log=counted)
        if not isinstance(item, Skip):
            return Loaded(item, None, counted)
        if not self.refill:
            return Loaded(None, item, counted)
        for draw in range(MAX_REFILL_DRAWS):
            other = derive_seed("refill", seed, draw) % len(self.dataset)
            # Replacements that are bad themselves are not logged or counted: each sample is counted
            # once, where the epoch's order schedules it.
            pair = self._load(other, derive_seed("refill-sample", seed, draw), log=False)
            if not isinstance(pair, Skip):
                return Loaded(pair, item, counted)
        raise DataQualityError(
            f"No good sample among {MAX_REFILL_DRAWS} random draws replacing bad item {index} "
            f"({item.kind}) of {self.description or 'the dataset'}; almost every sample is bad. "
            "Check the data paths and format."
        )


def collate_map_batch(items: list) -> tuple:
    """Collate the samples of a batch; count the scheduled bad ones (and the good ones) in the metadata."""
    samples, bad, good = [], Counter(), 0
    for item in items:
        if isinstance(item, Skip):  # a dataset wrapper of another kind
            bad[item.kind] += 1
            continue
        if not isinstance(item, Loaded):
            samples.append(item)
            good += 1
            continue
        if item.pair is not None:
            samples.append(item.pair)
        if item.counted:
            if item.bad is not None:
                bad[item.bad.kind] += 1
            else:
                good += 1
    meta = {"consumed": 1, "good": good, "bad": dict(bad), "sources": progress.take_times()}
    return collate_with_meta(samples, meta)


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
        SafeSamples(dataset, refill=is_train, description=description),
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
