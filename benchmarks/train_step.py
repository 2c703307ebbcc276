"""Training-step throughput (samples/s) of the training loop; on CUDA also model FLOP utilisation.

Runs ``open_clip_train.train.train_one_epoch`` (forward, ClipLoss, backward, AdamW step, logit-scale
clamp, non-finite check) over fixed batches (random images; random token ids or real captions).
Default: the issue's tiny CLIP and ViT-B-32, fp32 and amp_bf16, batch 64, 2 threads, CPU.
``--baseline`` times, alternating with ours in the same run, a step that does what OpenCLIP 3.3
does (every token through every block, torch's default per-tensor AdamW) and prints the ratio:
this machine is noisy, so the same-run ratio is the figure to compare.

    python -m benchmarks.train_step --models tiny --precisions fp32 --baseline --rounds 3
    python -m benchmarks.train_step --device cuda --models ViT-B-16 --precisions amp_bf16 --batch-size 256"""

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


def _run_full_computation(model) -> None:
    """Switch off the exact compute skips OpenCLIP 3.3 does not have (text early stop, last block
    at the pooled token only): the baseline then does 3.3's FLOPs."""
    if hasattr(model, "text_early_stop"):
        model.text_early_stop = False
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "early_stop"):
        text.early_stop = False
    if hasattr(model.visual, "last_block_pooled_only"):
        model.visual.last_block_pooled_only = False


def _texts(kind: str, count: int, ctx: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "random":
        return torch.randint(0, 49408, (count, ctx), generator=generator)
    from open_clip.tokenizer import tokenize

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "captions.txt")
    with open(path, encoding="utf-8") as f:
        captions = [line.strip() for line in f if line.strip()]
    picks = torch.randint(0, len(captions), (count,), generator=generator).tolist()
    return tokenize([captions[i] for i in picks], context_length=ctx)


class _Bench:
    """One model + optimizer + fixed batches, timed through ``train_one_epoch``."""

    def __init__(self, model_name: str, precision: str, device: str, batch_size: int, text: str, baseline: bool):
        from open_clip.factory import create_model_and_transforms
        from open_clip.loss import ClipLoss
        from open_clip_train.optim import create_optimizer, param_groups

        torch.manual_seed(0)
        model, _, _ = create_model_and_transforms(model_name, precision=precision, device=device, output_dict=True)
        size = model.visual.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        g = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(batch_size, 3, *size, generator=g),
                         _texts(text, batch_size, model.context_length, g)) for _ in range(2)]
        self.args = _train_args(precision, device, batch_size)
        adamw = dict(lr=1e-4, beta1=0.9, beta2=0.98, eps=1e-6)
        if baseline:
            _run_full_computation(model)
            # 3.3's optimizer: torch's default AdamW, which on CPU is the per-tensor loop
            self.optimizer = torch.optim.AdamW(param_groups(model, 0.2), lr=adamw["lr"],
                                               betas=(adamw["beta1"], adamw["beta2"]), eps=adamw["eps"])
        else:
            self.optimizer = create_optimizer(model, "adamw", wd=0.2, **adamw)
        self.model, self.loss, self.device, self.batch_size = model, ClipLoss(), device, batch_size

    def run(self, steps: int) -> float:
        """Samples per second over ``steps`` training steps."""
        from open_clip_train.train import train_one_epoch

        data = {"train": _Info(_Loader([self.batches[i % 2] for i in range(steps)]))}
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_one_epoch(self.model, data, self.loss, 0, self.optimizer, None, lambda s: 1e-4, None, self.args)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return steps * self.batch_size / (time.perf_counter() - t0)

    def utilisation(self, samples_per_s: float, precision: str) -> dict:
        from open_clip_train.precision import get_autocast

        images, texts = (t.to(self.device) for t in self.batches[0])
        with get_autocast(precision, "cuda")():
            flops = _model_flops(self.model, images, texts, self.loss)
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        achieved = flops * samples_per_s / self.batch_size
        out = {"tflops_per_s": round(achieved / 1e12, 1)}
        if peak:
            out["mfu"] = round(achieved / peak, 3)
        return out


def bench(model_name: str, precision: str, device: str, batch_size: int, steps: int, warmup: int,
          rounds: int = 1, text: str = "random", baseline: bool = False) -> dict:
    """Best-of-``rounds`` samples/s of our training step; with ``baseline`` also of a 3.3-like step
    (every token computed, per-tensor AdamW) timed in alternation, and their ratio."""
    ours = _Bench(model_name, precision, device, batch_size, text, baseline=False)
    ours.run(warmup)
    ref = None
    if baseline:
        ref = _Bench(model_name, precision, device, batch_size, text, baseline=True)
        ref.run(warmup)
    best, best_ref = 0.0, 0.0
    for _ in range(rounds):
        best = max(best, ours.run(steps))
        if ref is not None:
            best_ref = max(best_ref, ref.run(steps))
    result = {"model": model_name, "precision": precision, "device": device, "batch_size": batch_size,
              "text": text, "samples_per_s": round(best, 2)}
    if ref is not None:
        result["baseline_samples_per_s"] = round(best_ref, 2)
        result["speedup_vs_baseline"] = round(best / best_ref, 3)
    if device.startswith("cuda"):
        result.update(ours.utilisation(best, precision))
    else:
        # FLOPs put absolute figures from other machines in context: samples/s x GFLOP/sample is the
        # sustained rate a run needs, to compare with this machine's plain matmul rate
        images, texts = ours.batches[0]
        flops = _model_flops(ours.model, images, texts, ours.loss) / batch_size
        result["gflop_per_sample"] = round(flops / 1e9, 3)
        result["achieved_gflop_per_s"] = round(flops * best / 1e9, 1)
        if ref is not None:
            ref_flops = _model_flops(ref.model, images, texts, ref.loss) / batch_size
            result["baseline_gflop_per_sample"] = round(ref_flops / 1e9, 3)
            result["baseline_achieved_gflop_per_s"] = round(ref_flops * best_ref / 1e9, 1)
        result["matmul_gflop_per_s"] = round(_matmul_rate(), 1)
    return result


def _matmul_rate() -> float:
    """Best-of-5 GFLOP/s of one fp32 [4160, 256] x [256, 1024] product (the tiny ViT's MLP shape)."""
    a, w = torch.randn(4160, 256), torch.randn(1024, 256)
    torch.nn.functional.linear(a, w)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        torch.nn.functional.linear(a, w)
        best = min(best, time.perf_counter() - t0)
    return 2 * 4160 * 256 * 1024 / best / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["tiny", "ViT-B-32"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "amp_bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="timed rounds (alternating with the baseline); best kept")
    p.add_argument("--text", choices=["random", "captions"], default="random",
                   help="random token ids (the issue's set-up) or real captions from benchmarks/data")
    p.add_argument("--baseline", action="store_true",
                   help="also time a 3.3-like step in the same run: all tokens computed, per-tensor AdamW")
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
                result = bench(name, precision, a.device, a.batch_size, a.steps, a.warmup,
                               rounds=a.rounds, text=a.text, baseline=a.baseline)
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
