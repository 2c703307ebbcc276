"""Everything a training checkpoint holds, as one stateful object.

:class:`RunState` bundles the model, optimizer, GradScaler, training progress (:class:`TrainState`:
global step, position in the epoch, non-finite step counters), the train loader's position and the
RNG states, behind the ``state_dict`` / ``load_state_dict`` pair of ``torch.distributed.checkpoint``'s
``Stateful`` protocol. ``state_dict`` builds the checkpoint dict (3.3's keys plus the resume keys
listed in ``checkpoint``); ``load_state_dict`` restores all of it from such a dict, in DDP, FSDP and
single-process runs alike (sharded model and optimizer state come from the ``.dcp`` folder beside
the file when :meth:`RunState.resume` is given its path).
"""

from __future__ import annotations

from typing import Any

import torch

from .checkpoint import (
    ResumeState,
    build_checkpoint,
    get_rng_state,
    load_checkpoint_file,
    restore_checkpoint,
    set_rng_state,
)
from .distributed import all_gather_object
from .train import TrainState


def loader_state(data_info: Any) -> dict | None:
    """The train loader's position, if it can report one."""
    for obj in (data_info, getattr(data_info, "dataloader", None)):
        if hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict"):
            return obj.state_dict()
    return None


class RunState:
    """Model, optimizer, scaler, progress, loader position and RNG of one training run.

    Args:
        model: the (possibly DDP-wrapped, never compiled) model whose ``state_dict`` is saved.
        optimizer / scaler: saved when not None.
        name: the experiment name recorded in the checkpoint.
        args: the run's namespace, read for ``rank``, ``world_size``, ``distributed``, ``device`` and
            ``max_nonfinite_steps`` only.
        data_info: the train ``DataInfo`` (its loader position goes into step checkpoints); may be
            attached later, once the data is open.
    """

    def __init__(self, *, model: torch.nn.Module, optimizer: Any, scaler: Any, name: str | None, args: Any,
                 data_info: Any = None) -> None:
        self.model, self.optimizer, self.scaler, self.data_info = model, optimizer, scaler, data_info
        self.name = name
        self.args = args
        self.progress = TrainState()
        # Where the run stands: epochs completed and micro-batches of the next one consumed.
        self.epoch = 0
        self.batch_in_epoch = 0

    @property
    def distributed(self) -> bool:
        return bool(getattr(self.args, "distributed", False))

    def state_dict(self, *, epoch: int | None = None, batch_in_epoch: int | None = None) -> dict[str, Any]:
        """The checkpoint after ``epoch`` epochs and ``batch_in_epoch`` micro-batches of the next
        (0: an epoch boundary); either omitted: the position last recorded.

        A collective in a distributed run (every rank's RNG and loader position are gathered):
        call it on every rank at the same point.
        """
        if epoch is not None:
            self.epoch = epoch
        if batch_in_epoch is not None:
            self.batch_in_epoch = batch_in_epoch
        epoch, batch_in_epoch = self.epoch, self.batch_in_epoch
        rngs = all_gather_object(self.args, get_rng_state()) if self.distributed else None
        data_state = loader_state(self.data_info) if batch_in_epoch else None
        if batch_in_epoch and self.distributed:
            # WebDataset positions differ per rank and worker: keep every rank's (the loader picks its own).
            data_state = all_gather_object(self.args, data_state)
        progress = self.progress
        ckpt = build_checkpoint(
            model=self.model, optimizer=self.optimizer, scaler=self.scaler, name=self.name, epoch=epoch,
            global_step=progress.global_step, batch_in_epoch=batch_in_epoch,
            epoch_start_rng=progress.epoch_start_rng if batch_in_epoch else None, data_state=data_state,
            rng_per_rank=rngs)
        if progress.guard is not None:
            ckpt["train_state"] = progress.guard.state_dict()
        return ckpt

    def load_state_dict(self, checkpoint: dict[str, Any], *, path: str | None = None) -> None:
        """Restore everything from a checkpoint dict (ours, 3.3's, or a bare model state dict).

        ``path``: the file it was read from (names it in errors; a ``.dcp`` folder beside it holds
        the sharded model and optimizer). An epoch-boundary checkpoint restores the RNG now; a
        mid-epoch one leaves it to the training loop, after it has skipped the consumed batches.
        """
        resume = restore_checkpoint(checkpoint, self.model, self.optimizer, self.scaler, path=path)
        self.load_progress(resume)

    def resume(self, path: str) -> None:
        """``load_state_dict`` of the checkpoint file at ``path`` (``--resume``)."""
        self.load_state_dict(load_checkpoint_file(path), path=path)

    def load_progress(self, resume: ResumeState | None) -> None:
        """Continue from a resumed checkpoint (RNG restored now for an epoch-boundary resume)."""
        self.progress = TrainState()
        self.epoch = resume.start_epoch if resume is not None else 0
        self.batch_in_epoch = resume.batch_in_epoch if resume is not None else 0
        if resume is None:
            return
        rng = resume.rng
        if resume.rng_per_rank is not None and len(resume.rng_per_rank) == getattr(self.args, "world_size", 1):
            rng = resume.rng_per_rank[getattr(self.args, "rank", 0)]
        progress = TrainState(global_step=resume.global_step, start_batch=resume.batch_in_epoch)
        if resume.batch_in_epoch:
            progress.resume_rng, progress.epoch_start_rng = rng, resume.epoch_start_rng
            progress.data_state = resume.data_state
        elif rng is not None:
            set_rng_state(rng)
        train_state = resume.extras.get("train_state")
        if train_state:
            from .step_guard import NonFiniteGuard

            progress.guard = NonFiniteGuard(getattr(self.args, "max_nonfinite_steps", 10), self.args.device)
            progress.guard.load_state_dict(train_state)
        self.progress = progress
