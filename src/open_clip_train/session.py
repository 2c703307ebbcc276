"""The training phase of a run: epochs, checkpoints, and the fault tolerance around them.

:class:`TrainingSession` runs the epochs (train, summarise the data, evaluate, save) and owns what
keeps a run alive or ends it cleanly:

- step checkpoints (``--save-every-n-steps``) and their retention (``--keep-step-checkpoints``); a
  failed write stops every rank with one line naming the path and the cause;
- preemption: SIGTERM/SIGUSR1 make every rank stop at the same step, after ``step_<global step>.pt``
  is written (:class:`~open_clip_train.errors.Preempted` carries the exit status up to ``main``);
- the data-stall watchdog (its hooks in the dataloader workers), and collectives that time out
  because a peer rank stopped, reported as one-line errors;
- the epoch's data summary: bad samples per kind and the fraction check over all ranks, the share of
  step time spent waiting for data and the slowest data source.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from dataclasses import dataclass
from typing import Any

from .checkpoint import (
    SavePolicy,
    epoch_checkpoint_paths,
    save_epoch_checkpoint,
    save_step_checkpoint,
    step_checkpoint_path,
)
from .distributed import all_gather_object, barrier, broadcast_object, is_master
from .errors import CheckpointWriteError, Preempted, StallError, TrainingError
from .evaluate import evaluate
from .preemption import PreemptionHandler
from .run_state import RunState
from .sharded_checkpoint import is_sharded, save_sharded
from .train import train_one_epoch
from .watchdog import StallWatchdog, install_worker_hooks


@dataclass(frozen=True)
class FaultTolerance:
    """The run's fault-tolerance settings, derived once from the flags."""

    save_every_n_steps: int = 0
    keep_step_checkpoints: int = 1
    data_stall_timeout: float = 600.0
    slurm_requeue: bool = False

    @classmethod
    def from_args(cls, args: Any) -> FaultTolerance:
        return cls(save_every_n_steps=args.save_every_n_steps, keep_step_checkpoints=args.keep_step_checkpoints,
                   data_stall_timeout=args.data_stall_timeout, slurm_requeue=args.slurm_requeue)


def make_watchdog(ft: FaultTolerance, args: Any) -> StallWatchdog | None:
    """A started stall watchdog for the training data, or None when ``--data-stall-timeout 0``."""
    if not ft.data_stall_timeout or ft.data_stall_timeout <= 0:
        return None
    source = f"--train-data {args.train_data}" if args.train_data else f"the {args.dataset_type} training data"
    return StallWatchdog(ft.data_stall_timeout, source).start()


def save_policy(args: Any, ft: FaultTolerance) -> SavePolicy:
    return SavePolicy(args.checkpoint_path, args.epochs, args.save_frequency, args.save_most_recent,
                      args.delete_previous_checkpoint, ft.save_every_n_steps, ft.keep_step_checkpoints)


class TrainingSession:
    """Runs the epochs of a training run; see the module docstring.

    ``model`` is what the loop calls (maybe compiled); ``run_state`` holds what checkpoints save.
    """

    def __init__(self, *, args: Any, model: Any, dist_model: Any, data: dict, loss: Any, scheduler: Any,
                 writer: Any, tokenizer: Any, run_state: RunState, ft: FaultTolerance,
                 watchdog: StallWatchdog | None) -> None:
        self.args, self.model, self.dist_model, self.data, self.loss = args, model, dist_model, data, loss
        self.scheduler, self.writer, self.tokenizer = scheduler, writer, tokenizer
        self.state, self.ft, self.watchdog = run_state, ft, watchdog
        self.policy = save_policy(args, ft)
        self.preemption = PreemptionHandler(args)

    # -- the epochs -------------------------------------------------------------------------------

    def run(self, start_epoch: int) -> None:
        """Train from ``start_epoch`` to the last epoch; raises :class:`Preempted` after a preemption save."""
        loader = self.data["train"].dataloader
        if self.args.distributed and hasattr(loader, "check_epoch_fraction"):
            loader.check_epoch_fraction = False  # checked over all ranks in _summarise_data
        install_worker_hooks(self.data["train"], self.watchdog)
        self.preemption.install()
        try:
            for epoch in range(start_epoch, self.args.epochs):
                try:
                    self._train(epoch)
                    self._end_epoch(epoch + 1)
                except RuntimeError as e:  # a collective that failed because a peer hung or died
                    failure = collective_failure(e, self.args)
                    if failure is not None:
                        raise failure from e
                    raise
        except Preempted:
            self.preemption.close()  # every rank stopped at the same step: the last vote completes
            raise
        except BaseException:
            self.preemption.uninstall()  # this rank alone may be failing: do not wait on the others
            raise
        self.preemption.close()

    def _train(self, epoch: int) -> None:
        args = self.args
        if is_master(args):
            logging.info(f"Start epoch {epoch}")
        from .data import DataQualityError

        try:
            train_one_epoch(self.model, self.data, self.loss, epoch, self.state.optimizer, self.state.scaler,
                            self.scheduler, self.dist_model, args, tb_writer=self.writer, state=self.state.progress,
                            step_hook=self._after_step, watchdog=self.watchdog)
        except DataQualityError as e:
            raise TrainingError(f"--train-data: {e} (epoch {epoch}); saved checkpoints are intact.") from e

    def _after_step(self, progress: Any, epoch: int, batch_in_epoch: int) -> None:
        saved = False
        if self.ft.save_every_n_steps and progress.global_step % self.ft.save_every_n_steps == 0:
            self._save(epoch, batch_in_epoch)
            saved = True
        signum = self.preemption.poll()
        if signum:
            if not saved:
                self._save(epoch, batch_in_epoch)
            raise Preempted(signum, progress.global_step)

    def _end_epoch(self, completed: int) -> None:
        args = self.args
        self._summarise_data(completed)
        if any(v in self.data for v in ("val", "imagenet-val", "imagenet-v2")):
            evaluate(self.model, self.data, completed, args, tb_writer=self.writer, tokenizer=self.tokenizer)
            barrier(args)
        self._save(completed, 0, epoch_end=True)
        if completed < args.epochs:
            signum = self.preemption.poll_now()
            if signum:
                self._save(completed, 0)
                raise Preempted(signum, self.state.progress.global_step)

    # -- checkpoints ------------------------------------------------------------------------------

    def _save(self, epoch: int, batch_in_epoch: int, epoch_end: bool = False) -> None:
        """Write a step (or, with ``epoch_end``, the epoch) checkpoint; every rank calls it and waits.

        The other ranks wait on the host group (long timeout): a slow write must not trip the
        collective timeout. A failed write stops every rank with the master's one-line error.
        """
        args = self.args
        ckpt = self.state.state_dict(epoch=epoch, batch_in_epoch=batch_in_epoch)
        error: CheckpointWriteError | None = None
        if is_sharded(self.state.model) and args.logs and str(args.logs).lower() != "none":
            # every rank writes its shards of model and optimizer, before rank 0 writes the file
            paths = (epoch_checkpoint_paths(epoch, self.policy) if epoch_end
                     else [step_checkpoint_path(int(ckpt["global_step"]), self.policy)])
            try:
                for path in paths:
                    save_sharded(self.state.model, self.state.optimizer, path)
            except CheckpointWriteError as e:
                error = e
        if args.save_logs and error is None:
            try:
                if epoch_end:
                    save_epoch_checkpoint(ckpt, epoch, self.policy)
                else:
                    save_step_checkpoint(ckpt, self.policy)
            except CheckpointWriteError as e:
                error = e
        del ckpt
        if args.distributed and not args.horovod:
            message = broadcast_object(args, str(error) if error else None, long_wait=True)
            if message and error is None:
                raise TrainingError(f"rank 0 stopped the run: {message}")
        elif args.distributed:
            barrier(args)
        if error is not None:
            raise error

    # -- the epoch's data summary -----------------------------------------------------------------

    def _summarise_data(self, completed: int) -> None:
        args = self.args
        loader = self.data["train"].dataloader
        good = loader.good_sample_count() if hasattr(loader, "good_sample_count") else 0
        bad = dict(loader.bad_sample_counts()) if hasattr(loader, "bad_sample_counts") else {}
        times = dict(loader.source_times()) if hasattr(loader, "source_times") else {}
        wait, step_time = self.state.progress.epoch_timing
        if args.distributed:
            good, bad, times, wait, step_time = _merge(all_gather_object(args, (good, bad, times, wait, step_time)))
            if hasattr(loader, "max_bad_fraction"):
                from .data import DataQualityError, check_bad_fraction

                where = f" in {loader.description}" if getattr(loader, "description", "") else ""
                try:
                    check_bad_fraction(good, bad, loader.max_bad_fraction, end_of_epoch=True, where=where,
                                       sampled=getattr(loader, "sampled_counts", False))
                except DataQualityError as e:
                    raise TrainingError(f"--train-data: {e} (epoch {completed - 1}, all ranks); "
                                        "saved checkpoints are intact.") from e
        if not is_master(args):
            return
        counts = {kind: n for kind, n in bad.items() if n}
        if counts:
            logging.warning(f"Epoch {completed}: skipped bad training samples: "
                            + ", ".join(f"{kind}={n}" for kind, n in sorted(counts.items())))
        parts = [f"waited for data {100.0 * wait / step_time:.1f}% of the step time" if step_time > 0 else ""]
        slowest = _slowest(times)
        if slowest is not None:
            source, seconds, samples = slowest
            parts.append(f"slowest data source {source} ({1000.0 * seconds / samples:.2f} ms/sample over "
                         f"{samples} samples)")
        summary = "; ".join(p for p in parts if p)
        if summary:
            logging.info(f"Epoch {completed} data: {summary}")
        if self.writer is not None:
            for kind, n in counts.items():
                self.writer.add_scalar(f"train/bad_samples/{kind}", n, completed)
            if step_time > 0:
                self.writer.add_scalar("train/epoch_data_wait_percent", 100.0 * wait / step_time, completed)


def _merge(per_rank: list) -> tuple:
    good, bad, times, wait, step_time = 0, {}, {}, 0.0, 0.0
    for g, b, t, w, s in per_rank:
        good += g
        for kind, n in b.items():
            bad[kind] = bad.get(kind, 0) + n
        for key, (seconds, samples) in t.items():
            old = times.get(key, (0.0, 0))
            times[key] = (old[0] + seconds, old[1] + samples)
        wait, step_time = wait + w, step_time + s
    return good, bad, times, wait, step_time


def _slowest(times: dict) -> tuple[str, float, int] | None:
    ranked = [(seconds / samples, key, seconds, samples) for key, (seconds, samples) in times.items() if samples]
    if not ranked:
        return None
    _, key, seconds, samples = max(ranked)
    return key, seconds, samples


_PEER_TIMEOUT = ("Timed out", "timed out", "Watchdog caught collective operation timeout")
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted")


def collective_failure(error: BaseException, args: Any) -> BaseException | None:
    """A one-line error for a collective that failed because a peer rank hung or died, else None."""
    if not getattr(args, "distributed", False):
        return None
    text = str(error).strip()
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else type(error).__name__)[:200]
    timeout = getattr(args, "data_stall_timeout", 0)
    if any(m in text for m in _PEER_TIMEOUT):
        return StallError(
            f"Stall: rank {args.rank} waited {timeout:g} s (--data-stall-timeout) in a collective that a peer "
            f"rank never joined: the peer hung or is blocked reading data; see its log ({first}).")
    if any(m in text for m in _PEER_GONE):
        return TrainingError(f"rank {args.rank}: a peer rank exited during a collective; its log has the cause "
                             f"({first}).")
    return None


def preempted_message(p: Preempted, args: Any) -> str:
    """The line logged when a run stops on a signal."""
    saved = (f"saved {os.path.join(args.checkpoint_path, f'step_{p.global_step}.pt')}"
             if getattr(args, "save_logs", False) or not is_master(args) else "no checkpoint written (--logs none)")
    name = signal.Signals(p.signum).name
    return (f"Run preempted by {name} at global step {p.global_step}: {saved}; exiting with status "
            f"{p.exit_code}. Continue with --resume latest.")
