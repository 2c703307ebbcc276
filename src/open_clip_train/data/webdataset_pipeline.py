"""WebDataset loaders: :class:`WdsStream` (one deterministic, resumable sample stream per worker),
``build_wds_loader`` (explicit settings) and 3.3's ``get_wds_dataset`` adapter.

Order (a pure function of seed, epoch, rank and stream; a *stream* is what one dataloader worker
reads):
- not resampled: shards go through a buffered shuffle (2000/500) seeded with ``seed + epoch``, the
  same on every rank; rank ``r`` takes every ``world_size``-th shard, stream ``s`` every
  ``num_workers``-th of those. Training repeats a stream's shards (re-permuted per pass) until it has
  produced its ``num_worker_batches`` batches, so every rank yields the same number of batches.
- resampled: each stream draws shards with replacement (weighted by the upsampling factors) from an
  RNG seeded by (seed, epoch, rank, stream).
- training samples then go through a 5000/1000 shuffle buffer seeded by (seed, epoch, rank, stream);
  each sample's augmentation is seeded by (seed, epoch, rank, stream, position).
Resuming replays a stream's raw samples (reading, not decoding) up to the saved position.

Bad-sample accounting counts distinct samples: a training stream that decodes a sample it already
decoded in this epoch (wrapping around its shards, or drawing a shard again when resampled) does not
count it again, as good or as bad. This costs one integer per decoded sample and stream for the
epoch. What a training stream decodes is a random subset of its shards (the shuffle buffer reads
ahead), so the loader treats the counts as a sample when it checks the bad fraction.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import progress
from .bad_samples import (
    DEFAULT_MAX_BAD_FRACTION,
    MIN_SAMPLES_FOR_CHECK,
    BadSample,
    BadSampleCounter,
    DataQualityError,
)
from .info import DataInfo, SharedEpoch
from .resumable import ResumableLoader, _loader_generator, buffered_shuffle, collate_with_meta, derive_seed, sample_rng
from .samples import caption_from_bytes, image_from_bytes, make_pair
from .wds_shards import CAPTION_EXT, check_raw_sample, expand_urls, get_dataset_size, iter_shard_samples

_SHARD_SHUFFLE_SIZE = 2000
_SHARD_SHUFFLE_INITIAL = 500
_SAMPLE_SHUFFLE_SIZE = 5000
_SAMPLE_SHUFFLE_INITIAL = 1000

_log = logging.getLogger(__name__)


class WdsStream(IterableDataset):
    """Batches ``(images, texts, meta)`` from WebDataset shards; see the module docstring for the order.

    Args:
        urls / weights: expanded shard URLs and optional per-shard sampling weights (resampled only).
        num_workers: dataloader workers (0 = read in the main process; counts as one stream).
        num_worker_batches: batches each stream yields per epoch (training); ``None`` = one pass.
        partial: yield a last incomplete batch (evaluation).
        sample_shuffle: (buffer size, initial fill) of the training sample shuffle; 3.3's 5000/1000.
    """

    def __init__(
        self,
        urls: list[str],
        weights: list[float] | None,
        *,
        preprocess: Callable | None,
        tokenizer: Callable | None,
        batch_size: int,
        is_train: bool,
        resampled: bool,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        num_worker_batches: int | None,
        shared_epoch: SharedEpoch,
        partial: bool,
        sample_shuffle: tuple[int, int] = (_SAMPLE_SHUFFLE_SIZE, _SAMPLE_SHUFFLE_INITIAL),
    ) -> None:
        super().__init__()
        self.urls, self.weights = list(urls), weights
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.batch_size, self.is_train, self.resampled = batch_size, is_train, resampled
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers = num_workers
        self.num_worker_batches = num_worker_batches
        self.shared_epoch = shared_epoch
        self.partial = partial
        self.sample_shuffle = sample_shuffle
        self._next: tuple[int, int, dict] | None = None

    @property
    def num_streams(self) -> int:
        return max(1, self.num_workers)

    def prepare_epoch(self, epoch: int, start_batch: int, streams: dict) -> None:
        """Make the next iteration produce ``epoch`` continuing from the saved per-stream positions.

        Batches come round-robin from the workers, so after ``start_batch`` batches the next one is
        due from stream ``start_batch % num_streams``: worker ``w`` plays stream ``(w + start) % n``.
        """
        self._next = (epoch, start_batch % self.num_streams, dict(streams))

    def stream_shards(self, epoch: int, stream: int) -> list[str]:
        """The shards stream ``stream`` of this rank reads in ``epoch`` (first pass), in order."""
        if not self.is_train:
            return self.urls[stream :: self.num_streams]  # evaluation: no node split, as in 3.3
        rng = random.Random(self.seed + epoch)  # identical on every rank and worker
        order = list(buffered_shuffle(self.urls, _SHARD_SHUFFLE_SIZE, _SHARD_SHUFFLE_INITIAL, rng))
        return order[self.rank :: self.world_size][stream :: self.num_streams]

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_streams:
            raise RuntimeError(f"WdsStream built for {self.num_workers} workers runs in {info.num_workers}")
        epoch, rotation, positions = self._next or (self.shared_epoch.get_value(), 0, {})
        stream = (worker + rotation) % self.num_streams
        position = positions.get(stream, {"emitted": 0, "batches": 0})
        return self._batches(epoch, stream, position)

    # -- raw samples -------------------------------------------------------------------------------

    def _raw(self, epoch: int, stream: int) -> Iterator[dict]:
        if self.resampled:
            return self._raw_resampled(epoch, stream)
        shards = self.stream_shards(epoch, stream)
        if not shards:
            raise DataQualityError(f"Stream {stream} of rank {self.rank} has no shards ({len(self.urls)} in total)")
        if not self.is_train:
            return itertools.chain.from_iterable(_read_shard(u) for u in shards)
        return self._raw_passes(shards, epoch, stream)

    def _raw_passes(self, shards: list[str], epoch: int, stream: int) -> Iterator[dict]:
        for npass in itertools.count():
            order = list(shards)
            if npass:
                random.Random(derive_seed("pass", self.seed, epoch, self.rank, stream, npass)).shuffle(order)
            got_any = False
            for url in order:
                for sample in _read_shard(url):
                    got_any = got_any or "__bad__" not in sample
                    yield sample
            if not got_any:
                raise DataQualityError(
                    f"No readable sample in the {len(order)} shards of stream {stream}, rank {self.rank} "
                    f"(e.g. {order[0]}); check the paths and that they are tar files"
                )

    def _raw_resampled(self, epoch: int, stream: int) -> Iterator[dict]:
        rng = random.Random(derive_seed("shards", self.seed, epoch, self.rank, stream))
        empty_draws, limit = 0, max(100, 10 * len(self.urls))
        while True:
            url = rng.choices(self.urls, weights=self.weights, k=1)[0] if self.weights else rng.choice(self.urls)
            got_any = False
            for sample in _read_shard(url):
                got_any = got_any or "__bad__" not in sample
                yield sample
            empty_draws = 0 if got_any else empty_draws + 1
            if empty_draws > limit:
                raise DataQualityError(
                    f"{empty_draws} shards drawn in a row had no readable sample (last {url})"
                )

    # -- decoded batches ---------------------------------------------------------------------------

    def _load(
        self, raw: dict, epoch: int, stream: int, index: int, counter: BadSampleCounter, decoded: set[int] | None
    ) -> tuple | None:
        what = f"{raw['__url__']}:{raw['__key__']}"
        counted = True
        if decoded is not None:
            identity = _identity(raw)
            counted = identity not in decoded
            decoded.add(identity)
        start = time.perf_counter()
        try:
            image_ext = check_raw_sample(raw)
            caption = caption_from_bytes(raw[CAPTION_EXT], what)
            image = image_from_bytes(raw[image_ext], what)
            with sample_rng(derive_seed("sample", self.seed, epoch, self.rank, stream, index)):
                pair = make_pair(image, caption, self.preprocess, self.tokenizer, what, caption_as_list=False)
        except BadSample as exc:
            if counted:
                counter.add_bad(exc.kind, exc.detail)
            else:
                _log.debug("Skipping bad sample again (%s): %s", exc.kind, exc.detail)
            return None
        finally:
            progress.add_time(progress.source_key(raw["__url__"]), time.perf_counter() - start, 0)
        if counted:
            counter.add_good()
        return pair

    def _batches(self, epoch: int, stream: int, position: dict) -> Iterator[tuple]:
        counter = BadSampleCounter()
        raw = self._raw(epoch, stream)
        if self.is_train:
            rng = random.Random(derive_seed("samples", self.seed, epoch, self.rank, stream))
            raw = buffered_shuffle(raw, *self.sample_shuffle, rng)
        emitted, batches = position["emitted"], position["batches"]
        # Identities of the samples decoded in this epoch (training only: evaluation reads each once).
        decoded: set[int] | None = set() if self.is_train else None
        for sample in itertools.islice(raw, emitted):
            # replay without decoding; what was skipped there was counted before the save
            if decoded is not None:
                decoded.add(_identity(sample))
        limit = self.num_worker_batches
        if limit is not None and batches >= limit:
            return
        buf: list = []
        failed_in_a_row = 0  # decodes (repeats included) since the last good sample
        for sample in raw:
            pair = self._load(sample, epoch, stream, emitted, counter, decoded)
            emitted += 1
            if pair is None:
                failed_in_a_row += 1
                if counter.good == 0 and failed_in_a_row >= MIN_SAMPLES_FOR_CHECK:
                    raise DataQualityError(
                        f"No valid sample among {failed_in_a_row} read (distinct bad: {dict(counter.bad)})")
                continue
            failed_in_a_row = 0
            buf.append(pair)
            if len(buf) == self.batch_size:
                batches += 1
                yield self._emit(buf, stream, emitted, batches, counter)
                buf = []
                if limit is not None and batches >= limit:
                    return
        if buf and self.partial:
            batches += 1
            yield self._emit(buf, stream, emitted, batches, counter)
        good, bad = counter.take_delta()
        if good or bad:  # skips after the last batch still reach the main process
            yield None, None, {"consumed": 0, "good": good, "bad": bad, "sources": progress.take_times()}

    def _emit(self, buf: list, stream: int, emitted: int, batches: int, counter: BadSampleCounter) -> tuple:
        good, bad = counter.take_delta()
        meta = {
            "consumed": 1,
            "stream": stream,
            "position": {"emitted": emitted, "batches": batches},
            "good": good,
            "bad": bad,
            "sources": progress.take_times(),
        }
        return collate_with_meta(buf, meta)


def _identity(raw: dict) -> int:
    """A sample's identity within one stream and epoch (Python's hash is stable within a process)."""
    return hash((raw["__url__"], raw["__key__"], raw.get("__detail__")))


def _read_shard(url: str) -> Iterator[dict]:
    """Raw samples of ``url``, timing the reads per data source and recording the shard being read."""
    key = progress.source_key(url)
    progress.set_current(url)
    samples = iter_shard_samples(url)
    while True:
        start = time.perf_counter()
        sample = next(samples, None)
        progress.add_time(key, time.perf_counter() - start, 0 if sample is None else 1)
        if sample is None:
            return
        yield sample


def _effective_workers(workers: int, num_shards: int, world_size: int, split_shards: bool, is_train: bool) -> int:
    """Reduce the worker count so that every worker has a shard; error if a rank would have none."""
    if not split_shards:
        return workers
    per_rank = num_shards // world_size if is_train else num_shards
    if per_rank == 0:
        raise ValueError(
            f"{num_shards} shards cannot be split over {world_size if is_train else 1} processes; "
            "provide at least one shard per process or use --dataset-resampled."
        )
    if workers > per_rank:
        _log.warning(
            "Reducing dataloader workers from %d to %d: only %d shards per process (%d shards, %d processes).",
            workers, per_rank, per_rank, num_shards, world_size if is_train else 1,
        )
        return per_rank
    return workers


def _train_sizes(num_samples: int, batch_size: int, world_size: int, workers: int, floor: bool) -> tuple[int, int, int]:
    """3.3's sizing: ``(num_batches, num_samples, num_worker_batches)`` per rank and epoch."""
    round_fn = math.floor if floor else math.ceil
    global_batch_size = batch_size * world_size
    num_batches = round_fn(num_samples / global_batch_size)
    num_workers = max(1, workers)
    num_worker_batches = round_fn(num_batches / num_workers)
    if num_worker_batches < 1:
        raise ValueError(
            f"{num_samples} samples are less than one batch of {global_batch_size} per worker "
            f"({num_workers} workers); lower --batch-size / --workers or raise --train-num-samples."
        )
    num_batches = num_worker_batches * num_workers
    return num_batches, num_batches * global_batch_size, num_worker_batches


def build_wds_loader(
    urls: Any,
    preprocess: Callable | None,
    *,
    is_train: bool,
    batch_size: int,
    workers: int,
    tokenizer: Callable | None = None,
    resampled: bool = False,
    num_samples: int | None = None,
    upsampling_factors: str | None = None,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    floor: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    timeout: float = 0,
    sample_shuffle: tuple[int, int] = (_SAMPLE_SHUFFLE_SIZE, _SAMPLE_SHUFFLE_INITIAL),
) -> DataInfo:
    """A resumable WebDataset loader over ``urls`` (``::``-joined, brace-expanded string or list).

    Training: ``num_samples`` defaults to ``sizes.json`` / ``__len__``; the epoch is rounded as in
    3.3 so every worker yields the same number of batches. Evaluation: one pass, last batch partial,
    ``num_samples`` is bookkeeping only. More workers than shards per process are reduced (with a
    warning); fewer shards than processes is a ``ValueError``.
    """
    resampled = resampled and is_train
    shards, weights = expand_urls(urls, upsampling_factors if is_train else None)
    if is_train and upsampling_factors is not None:
        assert resampled, (
            "--train_data_upsampling_factors is only supported when sampling with replacement "
            "(with --dataset-resampled)."
        )
    if not shards:
        raise ValueError(f"No shards in {urls!r}")
    if is_train:
        if not num_samples:
            num_samples, _ = get_dataset_size(urls)
            if not num_samples:
                raise RuntimeError(
                    "Currently, the number of dataset samples must be specified for the training dataset. "
                    "Please specify it via `--train-num-samples` if no dataset length info is present."
                )
    else:
        num_samples = num_samples or 0
    workers = _effective_workers(workers, len(shards), world_size, not resampled, is_train)
    shared_epoch = SharedEpoch(epoch)
    if is_train:
        num_batches, num_samples, per_worker = _train_sizes(num_samples, batch_size, world_size, workers, floor)
    else:
        num_batches, per_worker = math.ceil(num_samples / batch_size), None
    stream = WdsStream(
        shards, weights, preprocess=preprocess, tokenizer=tokenizer, batch_size=batch_size,
        is_train=is_train, resampled=resampled, seed=seed, rank=rank if is_train else 0,
        world_size=world_size if is_train else 1, num_workers=workers, num_worker_batches=per_worker,
        shared_epoch=shared_epoch, partial=not is_train, sample_shuffle=sample_shuffle,
    )
    loader = DataLoader(
        stream, batch_size=None, shuffle=False, num_workers=workers, timeout=timeout,
        generator=_loader_generator(seed),
    )
    description = urls if isinstance(urls, str) else f"{len(shards)} shards"
    wrapped = ResumableLoader(
        loader, stream, shared_epoch, num_batches=num_batches, num_samples=num_samples, kind="stream",
        max_bad_fraction=max_bad_fraction, description=description, sampled_counts=is_train,
        layout={"rank": stream.rank, "world_size": stream.world_size, "batch_size": batch_size},
    )
    return DataInfo(wrapped, shared_epoch=shared_epoch)


def get_wds_dataset(
    args: Any,
    preprocess_img: Callable | None,
    is_train: bool,
    epoch: int = 0,
    floor: bool = False,
    tokenizer: Callable | None = None,
) -> DataInfo:
    """3.3's namespace adapter over :func:`build_wds_loader`."""
    urls = args.train_data if is_train else args.val_data
    assert urls is not None, "WebDataset needs --train-data / --val-data"
    return build_wds_loader(
        urls,
        preprocess_img,
        is_train=is_train,
        batch_size=args.batch_size,
        workers=args.workers,
        tokenizer=tokenizer,
        resampled=getattr(args, "dataset_resampled", False),
        num_samples=args.train_num_samples if is_train else getattr(args, "val_num_samples", None),
        upsampling_factors=getattr(args, "train_data_upsampling_factors", None),
        seed=getattr(args, "seed", 0),
        epoch=epoch,
        rank=getattr(args, "rank", 0),
        world_size=getattr(args, "world_size", 1),
        floor=floor,
        max_bad_fraction=getattr(args, "data_max_bad_fraction", DEFAULT_MAX_BAD_FRACTION),
        timeout=getattr(args, "data_timeout", 0) or 0,
    )


def filter_no_caption_or_no_image(sample: dict) -> bool:
    """3.3's predicate: the sample has a ``txt`` caption and a png/jpg/jpeg/webp image."""
    return CAPTION_EXT in sample and any(ext in sample for ext in ("png", "jpg", "jpeg", "webp"))

