"""Shared builders of the training-app tests: tiny CLIP and CoCa configs, a tiny model directory, CSV
data with optional corrupt rows, fixed batches standing in for a train loader, the environment and
command lines of `python -m open_clip_train.main` and torchrun, and waiting for log lines. (No tests
in this module.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_COCA = {
    "custom_text": True,
    "embed_dim": 32,
    "multimodal_cfg": {"attn_pooler_heads": 2, "context_length": 16, "heads": 2, "layers": 1, "vocab_size": 49408,
                       "width": 32},
    "text_cfg": {"context_length": 16, "embed_cls": True, "heads": 2, "layers": 1, "output_tokens": True,
                 "vocab_size": 49408, "width": 32},
    "vision_cfg": {"attentional_pool": True, "attn_pooler_heads": 2, "image_size": 32, "layers": 1,
                   "output_tokens": True, "patch_size": 16, "width": 32, "head_width": 16},
}
DIST_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_ID",
            "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_SIGNALS_TO_HANDLE")


class Loader(list):
    """Fixed ``(images, texts)`` batches with the sizes a train loader reports."""

    def __init__(self, batches):
        super().__init__(batches)
        self.num_batches = len(batches)
        self.num_samples = sum(len(b[0]) for b in batches)


class Info:
    """The ``DataInfo`` face of a loader: ``data["train"]`` for ``train_one_epoch``."""

    def __init__(self, loader):
        self.dataloader = loader

    def set_epoch(self, epoch):
        pass


def write_model_dir(root) -> str:
    """A `local-dir:` model name for the tiny CLIP config."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": TINY, "preprocess_cfg": {}}, f)
    return f"local-dir:{root}"


def write_csv(root, n: int, corrupt: tuple[int, ...] = (), missing: tuple[int, ...] = ()) -> str:
    """A CSV of ``n`` random 32x32 images; rows in ``corrupt`` point at a broken PNG, rows in ``missing``
    at a file that does not exist."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    broken = os.path.join(root, "broken.png")
    with open(broken, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really a png")
    rows = ["filepath\ttitle"]
    for i in range(n):
        path = os.path.join(root, f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        if i in corrupt:
            path = broken
        elif i in missing:
            path = os.path.join(root, f"missing-{i}.png")
        rows.append(f"{path}\tcaption {i} {['red', 'green', 'blue'][i % 3]}")
    csv = os.path.join(root, "train.csv")
    with open(csv, "w") as f:
        f.write("\n".join(rows) + "\n")
    return csv


def env(**extra) -> dict:
    """The test environment for child processes: this checkout on PYTHONPATH, no launcher variables."""
    base = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    path = os.pathsep.join([os.path.join(REPO, "src"), os.environ.get("PYTHONPATH", "")])
    base.update(PYTHONPATH=path, OMP_NUM_THREADS="1", **extra)
    return base


def train_args(model: str, csv: str, name: str, *extra: str, logs: str | None = None) -> list[str]:
    args = ["--model", model, "--train-data", csv, "--dataset-type", "csv", "--workers", "0", "--warmup", "2",
            "--precision", "fp32", "--device", "cpu", "--name", name, "--log-every-n-steps", "1", "--seed", "3",
            "--aug-cfg", "scale=(1.0,1.0)", "ratio=(1.0,1.0)", *extra]
    if logs is not None:  # torchrun's own parser swallows --logs (see README): leave the default there
        args += ["--logs", logs]
    return args


def main_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "open_clip_train.main", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(args: list[str], nproc: int = 2, module: str = "open_clip_train.main") -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()), "-m", module, *args]


def count_in(path, text: str) -> int:
    try:
        with open(path, errors="replace") as f:
            return f.read().count(text)
    except FileNotFoundError:
        return 0


def wait_for(proc: subprocess.Popen, path, text: str, count: int, timeout: float = 240) -> None:
    """Wait until ``text`` occurs ``count`` times in ``path`` (fails if the process ends first)."""
    deadline = time.monotonic() + timeout
    while count_in(path, text) < count:
        assert proc.poll() is None, f"process ended (rc {proc.returncode}) before {count}x {text!r} in {path}"
        assert time.monotonic() < deadline, f"timed out waiting for {count}x {text!r} in {path}"
        time.sleep(0.02)


def final_weights(checkpoint) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
