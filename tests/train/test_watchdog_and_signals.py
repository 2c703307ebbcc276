"""In-process checks of the stall watchdog (only waits for data count) and of the preemption handler."""

import logging
import os
import signal
import time

import pytest

from open_clip_train.data import progress
from open_clip_train.errors import Preempted, StallError
from open_clip_train.preemption import PreemptionHandler, requeue_slurm_job
from open_clip_train.session import FaultTolerance
from open_clip_train.watchdog import StallWatchdog, WorkerHooks


class _Args:
    distributed = False
    horovod = False
    rank = 0
    world_size = 1


@pytest.mark.timeout(60)
def test_only_waits_for_data_count_towards_the_stall_timeout():
    dog = StallWatchdog(0.5, "--train-data somewhere").start()
    try:
        for _ in range(3):
            with dog.waiting():
                time.sleep(0.2)  # a slow batch, but under the timeout
            time.sleep(0.7)  # a slow step / evaluation / save: not a wait for data
        assert dog.fired is None
    finally:
        dog.stop()


@pytest.mark.timeout(60)
def test_a_stalled_wait_interrupts_with_a_one_line_stall_error(caplog, tmp_path):
    progress.set_current(str(tmp_path / "dead-mount" / "shard-7.tar"))
    dog = StallWatchdog(0.5, "--train-data /data/{0..9}.tar").start()
    try:
        with caplog.at_level(logging.ERROR):
            with pytest.raises(StallError) as info:
                with dog.waiting():
                    time.sleep(30)  # a read that never returns; the watchdog interrupts it
        message = str(info.value)
        assert "stall" in message.lower() and "\n" not in message
        assert "--train-data /data/{0..9}.tar" in message and "shard-7.tar" in message
        assert "--data-stall-timeout 0.5" in message
        assert "Stacks of the main process" in caplog.text and "time.sleep" not in message
    finally:
        dog.stop()


def test_worker_hooks_ignore_preemption_signals_and_chain(tmp_path):
    calls = []
    hooks = WorkerHooks(lambda wid: calls.append(wid), None, None)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        hooks(3)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
        assert calls == [3]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_preemption_handler_records_first_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    handler = PreemptionHandler(_Args())
    assert handler.install()
    try:
        assert handler.poll() == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal while stopping is only counted
        time.sleep(0.05)
        assert handler.poll() == signal.SIGUSR1 and handler.repeats == 1
        assert handler.poll_now() == signal.SIGUSR1
    finally:
        handler.close()
    assert signal.getsignal(signal.SIGTERM) is before
    assert Preempted(signal.SIGTERM, 7).exit_code == 143 and Preempted(signal.SIGUSR1, 7).exit_code == 138


def test_requeue_needs_a_slurm_job(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert requeue_slurm_job() is False
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol at all: logged, not raised
    assert requeue_slurm_job() is False


def test_fault_tolerance_settings_come_from_the_flags():
    from open_clip_train.params import parse_args

    args = parse_args(["--keep-step-checkpoints", "3", "--data-stall-timeout", "0", "--slurm-requeue"])
    ft = FaultTolerance.from_args(args)
    assert (ft.keep_step_checkpoints, ft.data_stall_timeout, ft.slurm_requeue) == (3, 0, True)
    defaults = FaultTolerance.from_args(parse_args([]))
    assert (defaults.keep_step_checkpoints, defaults.data_stall_timeout, defaults.slurm_requeue) == (1, 600, False)
