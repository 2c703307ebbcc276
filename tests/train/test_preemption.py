"""Preemption end to end: SIGTERM / SIGUSR1 to the whole process group (as torchrun and SLURM send them)
save `step_<global step>.pt`, log "preempted", exit with 128 + signal, and `--resume latest` then ends
with exactly the weights of an uninterrupted run (CPU, fp32)."""

import glob
import os
import signal
import subprocess
import time

import pytest
import torch
from fault_helpers import (
    assert_same_weights,
    count_in,
    env,
    final_weights,
    main_cmd,
    train_args,
    wait_for,
    write_csv,
    write_model_dir,
)

EPOCHS = ["--epochs", "3", "--batch-size", "4"]  # 24 rows -> 6 steps per epoch, 18 in all


def _signal_group(proc: subprocess.Popen, sig: int, times: int = 1) -> float:
    """Send ``sig`` to the child's process group (the dataloader worker gets it too); return the exit time."""
    start = time.monotonic()
    for _ in range(times):
        os.killpg(proc.pid, sig)
        time.sleep(0.01)  # the second one lands while the checkpoint is being written
    proc.wait(timeout=120)
    return time.monotonic() - start


def _preempted_lines(log) -> list[str]:
    with open(log) as f:
        return [line for line in f if "preempted" in line]


@pytest.mark.timeout(900)
def test_sigterm_then_sigusr1_with_requeue_resume_bitwise(tmp_path):
    model = write_model_dir(str(tmp_path / "model"))
    csv = write_csv(str(tmp_path / "data"), 24, corrupt=(5,))
    logs = str(tmp_path / "logs")

    def args(name, *extra):
        return main_cmd(train_args(model, csv, name, *EPOCHS, "--workers", "1", *extra, logs=logs))

    ref = subprocess.run(args("ref"), env=env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]

    log = tmp_path / "logs" / "run" / "out.log"
    ckdir = tmp_path / "logs" / "run" / "checkpoints"
    with open(tmp_path / "run1.txt", "w") as out:
        proc = subprocess.Popen(args("run", "--resume", "latest"), env=env(), stdout=out, stderr=out,
                                start_new_session=True)
        wait_for(proc, log, "Train Epoch", 8)  # mid-epoch 1
        took = _signal_group(proc, signal.SIGTERM, times=2)
    assert proc.returncode == 128 + signal.SIGTERM, (tmp_path / "run1.txt").read_text()[-3000:]
    assert took < 60
    (line,) = _preempted_lines(log)
    assert "SIGTERM" in line
    step = int(line.split("global step ")[1].split(":")[0])
    assert 8 <= step < 18 and f"step_{step}.pt" in line
    saved = torch.load(ckdir / f"step_{step}.pt", weights_only=True)
    assert saved["global_step"] == step and saved["batch_in_epoch"] == step - 6 and saved["epoch"] == 1
    assert oct(os.stat(ckdir / f"step_{step}.pt").st_mode & 0o777) == oct(0o666 & ~_umask())
    assert not glob.glob(str(ckdir / "*.tmp"))

    # Resume; this time SLURM's warning signal, with --slurm-requeue and a stand-in scontrol.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "scontrol-calls.txt"
    (bindir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bindir / "scontrol").chmod(0o755)
    lines_before = count_in(log, "Train Epoch")
    slurm_env = env(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="4242")
    with open(tmp_path / "run2.txt", "w") as out:
        proc = subprocess.Popen(args("run", "--resume", "latest", "--slurm-requeue"), env=slurm_env, stdout=out,
                                stderr=out, start_new_session=True)
        wait_for(proc, log, "Train Epoch", lines_before + 3)
        _signal_group(proc, signal.SIGUSR1)
    assert proc.returncode == 128 + signal.SIGUSR1, (tmp_path / "run2.txt").read_text()[-3000:]
    assert f"resuming checkpoint '{ckdir / f'step_{step}.pt'}'" in log.read_text()
    second = _preempted_lines(log)[-1]
    assert "SIGUSR1" in second
    assert calls.read_text().split() == ["requeue", "4242"]
    step2 = int(second.split("global step ")[1].split(":")[0])
    assert step2 > step
    # --keep-step-checkpoints 1 (default): only the newest step file is left
    assert sorted(os.listdir(ckdir)) == sorted(
        {f"step_{step2}.pt"} | {f"epoch_{e}.pt" for e in range(1, step2 // 6 + 1)})

    done = subprocess.run(args("run", "--resume", "latest"), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(final_weights(tmp_path / "logs" / "ref" / "checkpoints" / "epoch_3.pt"),
                        final_weights(ckdir / "epoch_3.pt"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
