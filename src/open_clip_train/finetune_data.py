"""Data loaders of the fine-tuning command: labelled images from class folders, split across processes.

Training shuffles with a seed (``DistributedSampler`` under torchrun, so every process sees its own
share each epoch); evaluation gives process ``r`` every ``world_size``-th image, without padding, so that
summed counts over processes are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from .data.imagenet_folder import LabelledImages


def train_loader(
    samples: Sequence[tuple[str, int]],
    transform: Callable | None,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Shuffled batches of this process's share; call ``loader.sampler.set_epoch(e)`` before each epoch."""
    dataset = LabelledImages(samples, transform)
    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    else:
        generator = torch.Generator()
        generator.manual_seed(seed)
        sampler = _SeededRandomSampler(dataset, generator, seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


class _SeededRandomSampler(RandomSampler):
    """A random order that depends only on (seed, epoch), like ``DistributedSampler``'s."""

    def __init__(self, dataset: Dataset, generator: torch.Generator, seed: int) -> None:
        super().__init__(dataset, generator=generator)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


def eval_loader(
    samples: Sequence[tuple[str, int]],
    transform: Callable | None,
    *,
    batch_size: int,
    workers: int,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """This process's strided share of ``samples`` in order (no padding: summed counts are exact)."""
    dataset = LabelledImages(list(samples)[rank::world_size], transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=torch.cuda.is_available())
