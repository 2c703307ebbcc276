"""Deterministic sample order and resumable loaders.

Owns: seed derivation (``derive_seed``), per-sample RNG seeding (``sample_rng``), the seeded shuffle
buffer (``buffered_shuffle``), batch collation with metadata (``collate_with_meta``) and
:class:`ResumableLoader`, the wrapper the training app iterates.

How resume works. Every loader built here has a *source* (a batch sampler for map-style datasets, a
stream dataset for WebDataset) whose order is a pure function of (seed, epoch, rank, stream). Workers
send each batch as ``(images, texts, meta)``; ``meta`` says which stream produced it, how far that
stream has got and which samples it skipped. The wrapper strips ``meta``, yields ``(images, texts)``
and keeps the position, so ``state_dict()`` is exact at every batch boundary. ``load_state_dict``
hands the position back to the source before the next epoch's workers start; sources skip what was
already consumed without decoding it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import numbers
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.utils.data
from torch.utils.data import default_collate

from .bad_samples import DEFAULT_MAX_BAD_FRACTION, check_bad_fraction, merge_counts

STATE_FORMAT = "libreclip.data/1"

_log = logging.getLogger(__name__)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (stable across processes and runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def sample_rng(seed: int) -> Iterator[None]:
    """Seed the CPU torch, ``random`` and numpy RNGs for one sample, restoring them afterwards.

    Restoring matters with ``workers=0``: augmenting in the main process must not disturb the
    training RNG (dropout etc.). Dataloader workers skip the (slow, ~0.4 ms for numpy) restore.
    Only the CPU generator is touched, never CUDA's.
    """
    gen = torch.default_generator
    in_worker = torch.utils.data.get_worker_info() is not None
    saved = None if in_worker else (gen.get_state(), random.getstate(), np.random.get_state())
    gen.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        yield
    finally:
        if saved is not None:
            gen.set_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


def buffered_shuffle(items: Iterable, bufsize: int, initial: int, rng: random.Random) -> Iterator:
    """Shuffle a stream through a buffer, like webdataset's ``shuffle`` but with a given RNG.

    While the buffer is below ``bufsize`` it takes two inputs per output; it starts emitting once it
    holds ``initial`` items; each output is a random buffer slot (swapped with the last and popped);
    at the end the buffer is drained the same way.
    """
    initial = min(initial, bufsize)
    buf: list = []
    it = iter(items)

    def pick() -> Any:
        k = rng.randint(0, len(buf) - 1)
        buf[k], buf[-1] = buf[-1], buf[k]
        return buf.pop()

    for item in it:
        buf.append(item)
        if len(buf) < bufsize:
            nxt = next(it, _END)
            if nxt is not _END:
                buf.append(nxt)
        if len(buf) >= initial:
            yield pick()
    while buf:
        yield pick()


_END = object()


def _loader_generator(seed: int) -> torch.Generator:
    """A private generator for the DataLoader's base seed, so creating an iterator neither reads nor
    advances the global torch RNG (and worker seeds are reproducible)."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed("loader", seed))
    return gen


def collate_field(items: list) -> Any:
    """One field of a batch: tensors, arrays and numbers collate as torch does (stacked tensors),
    anything else (PIL images from an identity transform, caption strings from a tokenizer that
    returns text) stays a list, as in 3.3's WebDataset batches."""
    first = items[0]
    if isinstance(first, (torch.Tensor, np.ndarray, numbers.Number, Mapping)) and not isinstance(first, str):
        return default_collate(items)
    return list(items)


def collate_with_meta(samples: list, meta: dict) -> tuple:
    """Collate ``[(image, text), ...]`` into ``(images, texts, meta)``; ``(None, None, meta)`` if empty.

    The transform and tokenizer may return anything (3.3 accepts any callables): see ``collate_field``.
    """
    if not samples:
        return None, None, meta
    images, texts = zip(*samples)
    return collate_field(list(images)), collate_field(list(texts)), meta


def _next_batch(batches: Iterator) -> tuple | None:
    """The next ``(images, texts, meta)`` or ``None`` at the end; a worker dying mid-transfer is an error."""
    try:
        return next(batches)
    except StopIteration:
        return None
    except (EOFError, ConnectionError) as exc:
        # torch reports a worker killed while sending a batch as a broken pipe; say what happened.
        raise RuntimeError(
            f"A DataLoader worker exited unexpectedly while sending a batch ({exc!r}); "
            "look for the worker's own error or an out-of-memory kill above."
        ) from exc


def _fresh_position(epoch: int) -> dict:
    return {"epoch": epoch, "batches": 0, "streams": {}, "good": 0, "bad": {}}


class ResumableLoader:
    """Iterates ``(images, texts)`` batches of one epoch and knows its exact position.

    Args:
        loader: a ``torch.utils.data.DataLoader`` whose items are ``(images, texts, meta)``.
        source: the object fixing the order; has ``prepare_epoch(epoch, start_batch, streams)``.
        shared_epoch: the epoch to iterate next (set through ``DataInfo.set_epoch``).
        num_batches / num_samples: per-epoch size, as in 3.3.
        kind: ``"map"`` (CSV, synthetic) or ``"stream"`` (WebDataset); recorded in the state.
        max_bad_fraction: see ``bad_samples.check_bad_fraction``.
        fixed_bad: bad rows found when the dataset was indexed (e.g. unparsable CSV lines), added
            to the counts of every epoch.
        description: dataset name for error messages.
        sampled_counts: the good/bad counts come from a random subset of the data (WebDataset training
            decodes what its shuffle buffer picks), so the bad-fraction check allows for sampling noise.
        layout: ``{"rank", "world_size", "batch_size"}`` of this loader, stored in and checked
            against saved states.
    """

    def __init__(
        self,
        loader: Any,
        source: Any,
        shared_epoch: Any,
        num_batches: int,
        num_samples: int,
        kind: str,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        fixed_bad: dict | None = None,
        description: str = "",
        layout: dict | None = None,
        sampled_counts: bool = False,
    ) -> None:
        self.loader = loader
        self.layout = {"rank": 0, "world_size": 1, "batch_size": None, **(layout or {})}
        self.source = source
        self.shared_epoch = shared_epoch
        self.num_batches = num_batches
        self.num_samples = num_samples
        self.kind = kind
        self.max_bad_fraction = max_bad_fraction
        self.fixed_bad = dict(fixed_bad or {})
        self.description = description
        self.sampled_counts = sampled_counts
        self._pos = _fresh_position(shared_epoch.get_value())
        self._pending: dict | None = None
        # Seconds and samples per data source in the current epoch (see ``progress``); not resume state.
        self._source_times: dict[str, list[float]] = {}
        # A distributed training app checks the fraction over all ranks at the end of an epoch (each
        # rank reads a different part of the data) and turns this per-rank end-of-epoch check off.
        self.check_epoch_fraction = True

    def __len__(self) -> int:
        return self.num_batches

    def __getattr__(self, name: str) -> Any:
        # Behave like the wrapped DataLoader for attributes we don't define (batch_size, dataset...).
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    @property
    def num_workers(self) -> int:
        return self.loader.num_workers

    def bad_sample_counts(self) -> dict[str, int]:
        """Bad samples skipped in the current (or last finished) epoch, per kind (main + workers)."""
        return {k: v for k, v in sorted(self._pos["bad"].items()) if v}

    @property
    def start_batch(self) -> int:
        """Index (within its epoch) of the batch the next iteration starts with: 0 unless a loaded
        state resumes mid-epoch. The training loop adds it to its batch counter (LR step, logging)."""
        return self._pending["batches"] if self._pending is not None else 0

    def good_sample_count(self) -> int:
        """Good samples delivered in the current (or last finished) epoch."""
        return self._pos["good"]

    def source_times(self) -> dict[str, tuple[float, int]]:
        """``{source: (seconds, samples)}`` spent reading each data source this epoch (all workers)."""
        return {k: (v[0], int(v[1])) for k, v in self._source_times.items()}

    def state_dict(self) -> dict:
        """Position after the last batch yielded; a finished epoch is saved as the next one's start.

        The state is this rank's. Map-style positions are the same on every rank; WebDataset
        positions are per rank and worker, so a distributed run saves the list of all ranks' states
        (``all_gather_object``) and :meth:`load_state_dict` picks its own entry.
        """
        pos = self._pending or self._pos
        state = {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "num_workers": self.num_workers,
            **self.layout,
            "epoch": pos["epoch"],
            "batches": pos["batches"],
            "streams": {int(k): dict(v) for k, v in pos["streams"].items()},
            "good": pos["good"],
            "bad": dict(pos["bad"]),
        }
        if pos["batches"] >= self.num_batches or pos.get("finished"):
            state.update(_fresh_position(pos["epoch"] + 1))
        return state

    def load_state_dict(self, state: dict | list) -> None:
        """Continue from ``state`` (from :meth:`state_dict`, or a list of every rank's) at the next iteration.

        Raises ``ValueError`` when the state does not fit this loader (kind, world size, batch size;
        for WebDataset also rank and worker count, since its positions are per worker).
        """
        state = self._own_state(state)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"Not a data loader state (format {state.get('format')!r}, expected {STATE_FORMAT!r})")
        if state["kind"] != self.kind:
            raise ValueError(f"Loader state is for a {state['kind']!r} loader, this one is {self.kind!r}")
        state = self._to_this_layout(state)
        for key in ("world_size", "batch_size"):
            if state.get(key, self.layout[key]) != self.layout[key]:
                raise ValueError(
                    f"Loader state was saved with {key}={state[key]}, this loader has {self.layout[key]}; "
                    "resume with the same settings."
                )
        if self.kind == "stream" and state["streams"]:
            if state["num_workers"] != self.num_workers:
                raise ValueError(
                    f"Loader state was saved with {state['num_workers']} workers per process, this loader has "
                    f"{self.num_workers}; WebDataset positions are per worker, so resume with the same --workers."
                )
            if state.get("rank", self.layout["rank"]) != self.layout["rank"]:
                raise ValueError(
                    f"WebDataset loader state is rank {state['rank']}'s, this is rank {self.layout['rank']}; "
                    "save every rank's state (a list) and load the list."
                )
        self._pending = {
            "epoch": int(state["epoch"]),
            "batches": int(state["batches"]),
            "streams": {int(k): dict(v) for k, v in state["streams"].items()},
            "good": int(state["good"]),
            "bad": dict(state["bad"]),
        }
        self.shared_epoch.set_value(int(state["epoch"]))

    def _to_this_layout(self, state: dict) -> dict:
        """A position saved by a run with another world size or batch size, as this loader's.

        Map-style order is one global sequence that rank r reads every world_size-th sample of, so
        after k batches the ranks together consumed its first k * batch_size * world_size samples:
        this loader continues after as many whole batches of its own as fit in that prefix (at most
        one global batch of samples is seen twice, none is skipped). WebDataset positions are per
        rank and worker and cannot be carried over: the epoch restarts (samples may be seen twice).
        """
        saved = (state.get("world_size", self.layout["world_size"]), state.get("batch_size", self.layout["batch_size"]))
        mine = (self.layout["world_size"], self.layout["batch_size"])
        if saved == mine or (self.kind != "map" and saved[0] == mine[0]):
            # same layout; or a WebDataset run at the same world size, which must keep its settings
            # (load_state_dict names the one that changed)
            return state
        if self.kind == "map":
            consumed = int(state["batches"]) * saved[0] * saved[1]
            batches = consumed // (mine[0] * mine[1])
            _log.warning(
                f"Data position saved with world size {saved[0]} x batch {saved[1]}, resumed with {mine[0]} x "
                f"{mine[1]}: continuing after {batches * mine[0] * mine[1]} of the {consumed} samples consumed "
                "in this epoch.")
        else:
            batches = 0
            _log.warning(
                f"WebDataset position saved with world size {saved[0]}, batch {saved[1]}, {state.get('num_workers')} "
                f"workers cannot be carried over to world size {mine[0]}, batch {mine[1]}, {self.num_workers} "
                "workers: the interrupted epoch restarts from its first samples.")
        return {**state, **self.layout, "num_workers": self.num_workers, "batches": batches, "streams": {},
                "good": 0, "bad": {}}

    def _own_state(self, state: dict | list) -> dict:
        if isinstance(state, dict):
            return state
        states = list(state)
        mine = [s for s in states if s.get("rank") == self.layout["rank"]]
        if not mine:
            if states and (self.kind == "map" or states[0].get("world_size") != self.layout["world_size"]):
                return states[0]  # map-style positions are identical on all ranks; others restart the epoch
            raise ValueError(f"No loader state for rank {self.layout['rank']} among {len(states)} saved states")
        return mine[0]

    def __iter__(self) -> Iterator[tuple]:
        epoch = self.shared_epoch.get_value()
        pos, self._pending = self._pending, None
        if pos is not None and pos["epoch"] != epoch:
            raise ValueError(
                f"Loader state is for epoch {pos['epoch']} but epoch {epoch} was requested; call "
                "set_epoch with the epoch stored in the state before iterating."
            )
        if pos is None:
            pos = _fresh_position(epoch)
            pos["bad"] = dict(self.fixed_bad)
        pos["bad"] = Counter(pos["bad"])
        self._pos = pos
        self._source_times = {}
        self.source.prepare_epoch(epoch, pos["batches"], pos["streams"])
        where = f" in {self.description}" if self.description else ""
        batches = iter(self.loader)
        try:
            while (item := _next_batch(batches)) is not None:
                images, texts, meta = item
                self._account(meta)
                check_bad_fraction(pos["good"], pos["bad"], self.max_bad_fraction, where=where,
                                   sampled=self.sampled_counts)
                if images is not None:
                    yield images, texts
        finally:
            # Stop the workers now. Otherwise an error's traceback keeps the worker iterator alive
            # until the cyclic GC runs -- possibly inside a later forked worker, which then fails.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        pos["finished"] = True
        if self.check_epoch_fraction:
            check_bad_fraction(pos["good"], pos["bad"], self.max_bad_fraction, end_of_epoch=True, where=where,
                               sampled=self.sampled_counts)

    def _account(self, meta: dict) -> None:
        pos = self._pos
        pos["batches"] += meta.get("consumed", 0)
        pos["good"] += meta.get("good", 0)
        merge_counts(pos["bad"], meta.get("bad", {}))
        for key, (seconds, samples) in meta.get("sources", {}).items():
            entry = self._source_times.setdefault(key, [0.0, 0])
            entry[0] += seconds
            entry[1] += samples
        if meta.get("stream") is not None:
            pos["streams"][meta["stream"]] = meta["position"]
