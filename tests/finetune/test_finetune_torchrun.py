"""``open_clip_train.finetune`` under torchrun: 2 CPU processes (gloo) fine-tune and evaluate together."""

import json
import os
import socket
import subprocess
import sys

import pytest
from finetune_fixtures import base_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
def test_torchrun_two_process_finetune(tmp_path, colour_data, tiny_clip):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.join(REPO, "src"), os.environ.get("PYTHONPATH", "")]))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(k, None)
    out = tmp_path / "out"
    args = base_args(colour_data, tiny_clip, out, "--epochs", "5", "--lr", "1e-3", "--batch-size", "8",
                     "--wise-ft-alphas", "0", "1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(_free_port()), "-m", "open_clip_train.finetune", *args],
                         env=env, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    # 2 x 8 images per step; the evaluation counts of both processes are summed (every image once)
    assert results["val_acc"][-1] >= 0.9, results
    log = (out / "out.log").read_text()
    assert "2 process(es)" in log and "[4/4]" in log  # 64 images / (2 x 8) = 4 steps per epoch
