"""What the data code is reading right now, and how long each data source takes.

Two per-process records, written by the loaders wherever samples are read (main process or
dataloader worker):

- the *current source* (the file, shard or URL being opened or read, and since when). A stalled
  read leaves it pointing at the culprit, so a stall report can name it. A worker also copies it
  into a shared-memory slot given by :func:`publish_to`, where the main process can read it while
  the worker is blocked;
- seconds spent per *source key* (the directory or bucket prefix of what was read). Loaders take
  the delta with each batch (:func:`take_times`) and ship it to the main process with the batch.
"""

from __future__ import annotations

import os
import posixpath
import time
from typing import Any

_SLOT_BYTES = 1024


class _Record:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.source: str | None = None
        self.since = 0.0
        self.times: dict[str, list[float]] = {}
        self.slot: Any = None


_record = _Record()


def _mine() -> _Record:
    """This process's record; a forked worker starts with an empty one (never the parent's counts)."""
    global _record
    if _record.pid != os.getpid():
        _record = _Record()
    return _record


def source_key(source: str) -> str:
    """The data source a file or shard belongs to: its directory (or URL prefix)."""
    if "://" in source:
        return posixpath.dirname(source) or source
    return os.path.dirname(source) or source


def set_current(source: str) -> None:
    """Record that ``source`` is being read from now on (cheap: called once per sample or shard)."""
    rec = _mine()
    rec.source, rec.since = source, time.time()
    if rec.slot is not None:
        rec.slot.value = f"{rec.since:.3f} {source}".encode("utf-8", "replace")[: _SLOT_BYTES - 1]


def current() -> tuple[str, float] | None:
    """``(source, seconds since it started)`` in this process, or None before the first read."""
    rec = _mine()
    if rec.source is None:
        return None
    return rec.source, time.time() - rec.since


def add_time(key: str, seconds: float, samples: int = 1) -> None:
    """Add ``seconds`` spent reading ``samples`` samples of source ``key``."""
    entry = _mine().times.setdefault(key, [0.0, 0])
    entry[0] += seconds
    entry[1] += samples


def take_times() -> dict[str, list[float]]:
    """Seconds and samples per source key since the previous call (for the batch metadata)."""
    rec = _mine()
    times, rec.times = rec.times, {}
    return times


def new_slot() -> Any:
    """A shared-memory slot a worker publishes its current source into (create before the workers start)."""
    import multiprocessing

    return multiprocessing.RawArray("c", _SLOT_BYTES)


def publish_to(slot: Any) -> None:
    """Mirror this process's current source into ``slot`` (called in a dataloader worker at start)."""
    _mine().slot = slot


def read_slot(slot: Any) -> tuple[str, float] | None:
    """``(source, seconds since)`` published in ``slot``, or None if nothing was published."""
    raw = bytes(slot.value).decode("utf-8", "replace")
    since, _, source = raw.partition(" ")
    try:
        return source, time.time() - float(since)
    except ValueError:
        return None
