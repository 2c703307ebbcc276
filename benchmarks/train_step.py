"""Training-step throughput (samples/s) of the training loop; on CUDA also model FLOP utilisation.

Runs ``open_clip_train.train.train_one_epoch`` (forward, ClipLoss, backward, AdamW step, logit-scale
clamp, non-finite check) over random batches. Default: the issue's tiny CLIP and ViT-B-32, fp32 and
amp_bf16, batch 64, 2 threads, CPU.

    python benchmarks/train_step.py [--device cuda --models ViT-B-16 --precisions amp_bf16 --batch-size 256]
"""

from __future__ import annotations

import os
import sys

# Running `python benchmarks/train_step.py` puts benchmarks/ first on sys.path, where sibling
# scripts (tokenize.py) shadow standard-library modules; drop it.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import json
import logging
import tempfile
import time

import torch

TINY = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 256, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
}
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


class _Loader(list):
    def __init__(self, batches):
        super().__init__(batches)
        self.num_batches = len(batches)
        self.num_samples = sum(len(b[0]) for b in batches)


class _Info:
    def __init__(self, loader):
        self.dataloader = loader

    def set_epoch(self, epoch):
        pass


def _train_args(precision: str, device: str, batch_size: int):
    from open_clip_train.params import parse_args

    a = parse_args(["--precision", precision, "--device", device, "--batch-size", str(batch_size),
                    "--log-every-n-steps", "1000000"])
    a.distributed, a.world_size, a.rank, a.local_rank, a.distill, a.wandb = False, 1, 0, 0, False, False
    return a


def _model_flops(model, images, texts, loss) -> float:
    """FLOPs of one forward+backward (counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = model(images, texts)
        loss(**out).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench(model_name: str, precision: str, device: str, batch_size: int, steps: int, warmup: int) -> dict:
    from open_clip.factory import create_model_and_transforms
    from open_clip.loss import ClipLoss
    from open_clip_train.optim import create_optimizer
    from open_clip_train.train import train_one_epoch

    model, _, _ = create_model_and_transforms(model_name, precision=precision, device=device, output_dict=True)
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    ctx = model.context_length
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch_size, 3, *size, generator=g),
                torch.randint(0, 49408, (batch_size, ctx), generator=g)) for _ in range(2)]
    args = _train_args(precision, device, batch_size)
    optimizer = create_optimizer(model, "adamw", lr=1e-4, wd=0.2, beta1=0.9, beta2=0.98, eps=1e-6)
    loss = ClipLoss()

    def run(n: int) -> float:
        data = {"train": _Info(_Loader([batches[i % 2] for i in range(n)]))}
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_one_epoch(model, data, loss, 0, optimizer, None, lambda s: 1e-4, None, args)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(warmup)
    elapsed = run(steps)
    result = {"model": model_name, "precision": precision, "device": device, "batch_size": batch_size,
              "samples_per_s": round(steps * batch_size / elapsed, 2)}
    if device.startswith("cuda"):
        images, texts = (t.to(device) for t in batches[0])
        from open_clip_train.precision import get_autocast

        with get_autocast(precision, "cuda")():
            flops = _model_flops(model, images, texts, loss)
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        achieved = flops * steps / elapsed
        result["tflops_per_s"] = round(achieved / 1e12, 1)
        if peak:
            result["mfu"] = round(achieved / peak, 3)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["tiny", "ViT-B-32"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "amp_bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    from open_clip.config_registry import add_model_config

    with tempfile.TemporaryDirectory() as d:
        with open(f"{d}/bench-tiny.json", "w") as f:
            json.dump(TINY, f)
        add_model_config(d)
        for model_name in a.models:
            for precision in a.precisions:
                name = "bench-tiny" if model_name == "tiny" else model_name
                print(json.dumps(bench(name, precision, a.device, a.batch_size, a.steps, a.warmup)), flush=True)


if __name__ == "__main__":
    main()
