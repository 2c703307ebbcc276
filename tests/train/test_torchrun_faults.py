"""Two-process torchrun runs (gloo on CPU) with corrupt data: every loss mode keeps training (each rank
refills its batches), and SIGTERM to torchrun stops both ranks at the same step with a checkpoint from
which `--resume latest` reproduces the uninterrupted run bit for bit."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
from fault_helpers import (
    TINY,
    TINY_COCA,
    assert_same_weights,
    env,
    final_weights,
    free_port,
    torchrun_cmd,
    train_args,
    wait_for,
    write_csv,
    write_model_dir,
)

pytestmark = pytest.mark.dist

# Runs every loss mode in one torchrun launch: main() joins the process group the first call formed.
RUNNER = textwrap.dedent("""
    import json, sys
    from open_clip import add_model_config
    from open_clip_train.main import main
    base, runs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    add_model_config(sys.argv[3])  # the tiny CoCa config, by name (CoCa models are chosen by config)
    for name, extra in runs:
        if main(base + ["--name", name] + extra) is not None:
            sys.exit(f"run {name} failed")
""")


@pytest.mark.timeout(600)
def test_every_loss_mode_trains_on_corrupt_csv_under_torchrun(tmp_path):
    model = write_model_dir(str(tmp_path / "model"))
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "coca_tiny-faults.json").write_text(json.dumps(TINY_COCA))
    # 24 rows, two of them bad: each rank reads 12 rows in 3 batches of 4 and must keep all batches full
    csv = write_csv(str(tmp_path / "data"), 24, corrupt=(3,), missing=(17,))
    base = train_args(model, csv, "unused", "--epochs", "1", "--batch-size", "4", "--data-max-bad-fraction", "0.5")
    base = base[:base.index("--name")] + base[base.index("--name") + 2:]
    teacher = str(tmp_path / "logs" / "clip" / "checkpoints" / "epoch_1.pt")
    runs = [
        ("clip", []),
        ("local", ["--local-loss"]),
        ("gather", ["--gather-with-grad"]),
        ("local_gather", ["--local-loss", "--gather-with-grad"]),
        ("siglip", ["--siglip"]),
        ("siglip_shift", ["--siglip", "--loss-dist-impl", "shift"]),
        ("siglip_reduce", ["--siglip", "--loss-dist-impl", "reduce"]),
        ("siglip_gather", ["--siglip", "--loss-dist-impl", "gather"]),
        ("coca", ["--model", "coca_tiny-faults", "--local-loss", "--gather-with-grad"]),
        ("distill", ["--distill-model", model, "--distill-pretrained", teacher, "--gather-with-grad"]),
    ]
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(script), json.dumps(base), json.dumps(runs), str(configs)]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=540, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for name, _ in runs:
        log = (tmp_path / "logs" / name / "out.log").read_text()
        steps = re.findall(r"Train Epoch: 0 \[\s*(\d+)/(\d+)", log)
        # 3 full steps of 2 ranks x 4 samples; a short batch would have failed the gather instead
        assert [int(n) for n, _ in steps] == [8, 16, 24], (name, steps)
        # each bad row is read by one rank and counted once over both ranks
        assert "skipped bad training samples: image_decode_error=1, missing_image=1" in log, name
        assert os.path.exists(tmp_path / "logs" / name / "checkpoints" / "epoch_1.pt")


def _run_torchrun(tmp_path, model, csv, name, *extra, timeout=300):
    args = train_args(model, csv, name, "--epochs", "2", "--batch-size", "4", "--local-loss", "--gather-with-grad",
                      "--workers", "1", *extra)
    return subprocess.run(torchrun_cmd(args), env=env(), capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


@pytest.mark.timeout(900)
def test_sigterm_to_torchrun_stops_ranks_together_and_resumes_bitwise(tmp_path):
    model = write_model_dir(str(tmp_path / "model"))
    csv = write_csv(str(tmp_path / "data"), 48, corrupt=(7,), missing=(30,))  # 6 steps per epoch on 2 ranks
    ref = _run_torchrun(tmp_path, model, csv, "ref")
    assert ref.returncode == 0, (ref.stdout + ref.stderr)[-4000:]

    args = train_args(model, csv, "run", "--epochs", "2", "--batch-size", "4", "--local-loss", "--gather-with-grad",
                      "--workers", "1", "--resume", "latest")
    log = tmp_path / "logs" / "run" / "out.log"
    with open(tmp_path / "torchrun.txt", "w") as out:
        proc = subprocess.Popen(torchrun_cmd(args), env=env(), stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        wait_for(proc, log, "Train Epoch", 4)
        proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers (and their loader workers)
        proc.wait(timeout=120)
    output = (tmp_path / "torchrun.txt").read_text()
    lines = [line for line in output.splitlines() if "Run preempted by SIGTERM" in line]
    assert len(lines) == 2, output[-4000:]  # one per rank
    steps = {int(line.split("global step ")[1].split(":")[0]) for line in lines}
    assert len(steps) == 1, lines  # both ranks stopped after the same step
    (step,) = steps
    assert all("exiting with status 143" in line for line in lines)
    assert os.path.exists(tmp_path / "logs" / "run" / "checkpoints" / f"step_{step}.pt")

    done = subprocess.run(torchrun_cmd(args), env=env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert f"step_{step}.pt' (epoch" in log.read_text()
    assert_same_weights(final_weights(tmp_path / "logs" / "ref" / "checkpoints" / "epoch_2.pt"),
                        final_weights(tmp_path / "logs" / "run" / "checkpoints" / "epoch_2.pt"))


assert TINY  # the tiny CLIP config the model directory is written from
