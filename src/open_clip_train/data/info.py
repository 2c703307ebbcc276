"""Containers handed to the training app: :class:`SharedEpoch` and :class:`DataInfo`."""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from typing import Any


class SharedEpoch:
    """An epoch number shared with dataloader worker processes (a ``multiprocessing.Value``)."""

    def __init__(self, epoch: int = 0) -> None:
        self.shared_epoch = mp.Value("i", epoch)

    def set_value(self, epoch: int) -> None:
        self.shared_epoch.value = epoch

    def get_value(self) -> int:
        return self.shared_epoch.value


@dataclass
class DataInfo:
    """A dataloader with its sampler and shared epoch, as returned by ``get_data``.

    ``dataloader`` is a :class:`~open_clip_train.data.resumable.ResumableLoader` for the loaders built
    here (iterates ``(images, texts)`` batches, has ``num_samples``, ``num_batches``, ``state_dict``,
    ``load_state_dict`` and ``bad_sample_counts``); any iterable works for the basic API.
    """

    dataloader: Any
    sampler: Any = None
    shared_epoch: SharedEpoch | None = None

    def set_epoch(self, epoch: int) -> None:
        """Tell the sampler / workers which epoch comes next (call before iterating the loader)."""
        if self.shared_epoch is not None:
            self.shared_epoch.set_value(epoch)
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def bad_sample_counts(self) -> dict[str, int]:
        """Bad samples skipped so far in the current (or last finished) epoch, per kind."""
        fn = getattr(self.dataloader, "bad_sample_counts", None)
        return fn() if fn is not None else {}

    def state_dict(self) -> dict:
        """The loader position (see ``ResumableLoader.state_dict``)."""
        return self.dataloader.state_dict()

    def load_state_dict(self, state: dict | list) -> None:
        """Restore a position saved by :meth:`state_dict` (or a list of every rank's states); the next
        epoch iterated continues from it. Also sets the shared epoch to the saved one."""
        self.dataloader.load_state_dict(state)
        self.set_epoch(self.dataloader.shared_epoch.get_value())
