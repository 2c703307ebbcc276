"""Preemption: SIGTERM or SIGUSR1 end the run with a checkpoint and exit status 128 + signal number.

SLURM (``--signal=USR1@90``, or SIGTERM at preemption and time limit), Kubernetes and torchrun send a
signal some time before they kill a job. The handler only records the signal; the training loop
polls after every optimizer step. Ranks agree on the step without waiting for each other: each poll
starts a non-blocking max-reduction of the local flag on the host group and reads the previous
poll's result (:class:`~open_clip_train.distributed.AsyncVote`), so every rank sees the request at
the same step, one step after the first rank got it. The app then writes ``step_<global step>.pt``
(the same checkpoint as ``--save-every-n-steps``), logs a line containing "preempted", optionally
requeues the SLURM job (:func:`requeue_slurm_job`) and exits. A second signal while the checkpoint
is written is recorded and otherwise ignored: the atomic write is never interrupted. Dataloader
workers ignore both signals (the main process decides; see ``watchdog.WorkerHooks``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

from .distributed import AsyncVote

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionHandler:
    """Records SIGTERM/SIGUSR1 and tells every rank, at the same step, that the run must stop."""

    def __init__(self, args) -> None:
        self._vote = AsyncVote(args)
        self.signum = 0  # first signal received on this rank (0 = none)
        self.repeats = 0  # further signals while already stopping
        self._previous: dict = {}

    def install(self) -> bool:
        """Take over SIGTERM and SIGUSR1 (only possible in the main thread); True if installed."""
        if threading.current_thread() is not threading.main_thread():
            logging.warning("Training runs outside the main thread: SIGTERM/SIGUSR1 will not save a checkpoint.")
            return False
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return True

    def uninstall(self) -> None:
        """Restore the previous handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame) -> None:
        # Runs between two bytecodes of the main thread: record only (no logging, no I/O).
        if self.signum:
            self.repeats += 1
        else:
            self.signum = signum

    def poll(self) -> int:
        """The signal every rank agrees to stop on (0 = continue); call after every step on every rank."""
        return self._vote.vote(self.signum)

    def poll_now(self) -> int:
        """Blocking form of :meth:`poll`, for points where the ranks wait for each other anyway."""
        return self._vote.settle(self.signum)

    def close(self) -> None:
        """Finish the vote still in flight (every rank has started it) and restore the signal handlers."""
        self._vote.finish()
        self.uninstall()


def requeue_slurm_job() -> bool:
    """``scontrol requeue $SLURM_JOB_ID`` (SLURM does not requeue a job that exits on its own)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        logging.info("--slurm-requeue: SLURM_JOB_ID is not set (not a SLURM job); nothing to requeue.")
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        logging.error(f"--slurm-requeue: `scontrol requeue {job}` failed: {e}")
        return False
    if result.returncode != 0:
        logging.error(f"--slurm-requeue: `scontrol requeue {job}` exited with {result.returncode}: "
                      f"{(result.stderr or result.stdout).strip()}")
        return False
    logging.info(f"Requeued SLURM job {job} (scontrol requeue).")
    return True
