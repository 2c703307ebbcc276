"""Stalled storage never hangs a run: a FIFO nobody writes as the data source ends in a one-line "stall"
error (with every thread's stack in the log and the source named) well within the test's time limit,
and a rank whose peer stops reaching collectives fails the same way instead of waiting forever."""

import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
from fault_helpers import env, free_port, main_cmd, train_args, write_csv, write_model_dir

TIMEOUT = "3"


def _last_error(text: str) -> str:
    return [line for line in text.splitlines() if "| ERROR |" in line][-1]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie (exited, not yet reaped by its dead parent's reaper) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[-1].startswith("Z")


@pytest.mark.timeout(180)
def test_fifo_shard_in_a_worker_ends_in_stall_error(tmp_path):
    model = write_model_dir(str(tmp_path / "model"))
    fifo = tmp_path / "shard-000.tar"
    os.mkfifo(fifo)  # opening it for reading blocks until someone writes: nobody will
    args = train_args(model, str(fifo), "stall", "--dataset-type", "webdataset", "--train-num-samples", "8",
                      "--batch-size", "4", "--workers", "1", "--epochs", "1", "--data-stall-timeout", TIMEOUT,
                      logs=str(tmp_path / "logs"))
    start = time.monotonic()
    proc = subprocess.run(main_cmd(args), env=env(), capture_output=True, text=True, timeout=150)
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert took < 90
    log = (tmp_path / "logs" / "stall" / "out.log").read_text()
    error = _last_error(log)
    assert "stall" in error.lower() and f"--data-stall-timeout {TIMEOUT}" in error
    assert str(fifo) in error  # names the shard the worker is stuck on
    assert "Stacks of the main process" in log and 'File "' in log
    worker = re.search(r"Stacks of dataloader worker pid (\d+), reading (\S+)", log)
    assert worker is not None and worker.group(2) == str(fifo)
    dump = log.split(worker.group(0))[1]
    assert "Current thread" in dump or "Thread 0x" in dump  # faulthandler's dump of the stuck worker
    assert _gone(int(worker.group(1)))  # no worker left behind, blocked on the FIFO


@pytest.mark.timeout(180)
def test_fifo_csv_in_the_main_process_ends_in_stall_error(tmp_path):
    model = write_model_dir(str(tmp_path / "model"))
    fifo = tmp_path / "train.csv"
    os.mkfifo(fifo)
    args = train_args(model, str(fifo), "stall", "--batch-size", "4", "--epochs", "1",
                      "--data-stall-timeout", TIMEOUT, logs=str(tmp_path / "logs"))
    start = time.monotonic()
    proc = subprocess.run(main_cmd(args), env=env(), capture_output=True, text=True, timeout=150)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert time.monotonic() - start < 90
    error = _last_error(proc.stderr)
    assert "stall" in error.lower() and str(fifo) in error and "\\n" not in error
    assert "Stacks of the main process" in proc.stderr


@pytest.mark.timeout(180)
def test_fifo_image_in_a_csv_ends_in_stall_error(tmp_path):
    model = write_model_dir(str(tmp_path / "model"))
    csv = write_csv(str(tmp_path / "data"), 8)
    fifo = tmp_path / "data" / "3.png"
    os.remove(fifo)
    os.mkfifo(fifo)  # row 3's image: opening it blocks (a dead mount looks the same to the reader)
    args = train_args(model, csv, "stall", "--batch-size", "4", "--epochs", "1", "--data-stall-timeout", TIMEOUT,
                      logs=str(tmp_path / "logs"))
    proc = subprocess.run(main_cmd(args), env=env(), capture_output=True, text=True, timeout=150)
    assert proc.returncode == 1, proc.stderr[-3000:]
    error = _last_error((tmp_path / "logs" / "stall" / "out.log").read_text())
    assert "stall" in error.lower() and f"the main process has been reading {fifo}" in error


# Rank 1 stops reaching collectives at its third step (as if stuck in a read the watchdog cannot see).
HANG_ON_RANK_1 = textwrap.dedent("""
    import os, sys, time
    import open_clip_train.train as train
    real = train._optimizer_step
    calls = {"n": 0}
    def hanging(*args, **kwargs):
        calls["n"] += 1
        if os.environ["RANK"] == "1" and calls["n"] == 3:
            time.sleep(600)
        return real(*args, **kwargs)
    train._optimizer_step = hanging
    from open_clip_train.main import cli
    sys.exit(cli(sys.argv[1:]))
""")


@pytest.mark.dist
@pytest.mark.timeout(240)
def test_hung_peer_ends_in_stall_error_instead_of_waiting_forever(tmp_path):
    model = write_model_dir(str(tmp_path / "model"))
    csv = write_csv(str(tmp_path / "data"), 32)
    script = tmp_path / "hang.py"
    script.write_text(HANG_ON_RANK_1)
    port = str(free_port())
    procs = []
    for rank in range(2):
        args = train_args(model, csv, "peer", "--batch-size", "4", "--epochs", "1", "--data-stall-timeout", TIMEOUT,
                          logs=str(tmp_path / "logs"))
        rank_env = env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=rank_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        start = time.monotonic()
        _, err0 = procs[0].communicate(timeout=180)
        took = time.monotonic() - start
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 1, err0[-3000:]
    assert took < 150
    error = _last_error(err0)
    assert "stall" in error.lower() and "peer rank" in error and "--data-stall-timeout" in error
