"""Training-step throughput (samples/s) and model FLOP utilisation (MFU) of the training loop.

Runs ``open_clip_train.train.train_one_epoch`` (forward, ClipLoss, backward, AdamW step, logit-scale
clamp, non-finite check) over fixed batches (random images; random token ids or real captions).
Default: the issue's tiny CLIP and ViT-B-32, fp32 and amp_bf16, batch 64, 2 threads, CPU.
``--baseline`` times, alternating with ours in the same run, a step that does what OpenCLIP 3.3
does (every token through every block, torch's default AdamW, no compile) and prints the ratio:
shared machines are noisy, so the same-run ratio is the figure to compare.

FLOPs per sample are the ones the training loop counts for its log line (``open_clip_train.mfu``:
the path that runs); MFU divides FLOPs x samples/s by the device's peak (the GPU table, or on CPU
this machine's measured matmul rate in the precision's dtype). ``mfu_at_3p3_flops`` credits ours
with the 3.3-like step's FLOPs per sample (work it skips counts as done).

    python -m benchmarks.train_step --models tiny --precisions fp32 --baseline --rounds 3 --steps 6
    python -m benchmarks.train_step --gpu      # ViT-B-16, batch 256, amp_bf16, ours compiled vs 3.3-like
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
# --gpu: the GPU set-up (one GPU; under torchrun each rank would run the same)
GPU_PRESET = dict(models=["ViT-B-16"], precisions=["amp_bf16"], device="cuda", batch_size=256, steps=10,
                  warmup=3, rounds=3, baseline=True, compile=True, text="captions")


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


def _train_args(precision: str, device: str, batch_size: int, compiled: bool):
    from open_clip_train.params import parse_args

    a = parse_args(["--precision", precision, "--device", device, "--batch-size", str(batch_size),
                    "--log-every-n-steps", "1000000"])
    a.distributed, a.world_size, a.rank, a.local_rank, a.distill, a.wandb = False, 1, 0, 0, False, False
    a.torchcompile = compiled  # the loop then cuts captions to 16-token buckets, as main's --torchcompile
    return a


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

    def __init__(self, model_name: str, precision: str, device: str, batch_size: int, text: str, baseline: bool,
                 compile_model: bool = False):
        from open_clip.factory import create_model_and_transforms
        from open_clip.loss import ClipLoss
        from open_clip_train.optim import create_optimizer, param_groups

        torch.manual_seed(0)
        model, _, _ = create_model_and_transforms(model_name, precision=precision, device=device, output_dict=True)
        size = model.visual.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        g = torch.Generator().manual_seed(0)
        # Images start on the device (a pinned, prefetching loader hides that copy in real runs); texts
        # stay on the CPU, where the loop reads the early stop's lengths before moving them.
        self.batches = [(torch.randn(batch_size, 3, *size, generator=g).to(device),
                         _texts(text, batch_size, model.context_length, g)) for _ in range(2)]
        adamw = dict(lr=1e-4, beta1=0.9, beta2=0.98, eps=1e-6)
        if baseline:
            _run_full_computation(model)
            # 3.3's optimizer: torch's default AdamW (per-tensor loop on CPU, foreach on CUDA)
            self.optimizer = torch.optim.AdamW(param_groups(model, 0.2), lr=adamw["lr"],
                                               betas=(adamw["beta1"], adamw["beta2"]), eps=adamw["eps"])
        else:
            self.optimizer = create_optimizer(model, "adamw", wd=0.2, **adamw)  # fused where torch has it
        self.compiled = compile_model and not baseline
        if self.compiled:
            model = torch.compile(model)  # what main's --torchcompile does
        self.args = _train_args(precision, device, batch_size, self.compiled)
        self.model, self.loss, self.device, self.batch_size = model, ClipLoss(), device, batch_size

    def run(self, steps: int) -> float:
        """Samples per second over ``steps`` training steps."""
        from open_clip_train.train import train_one_epoch

        data = {"train": _Info(_Loader([self.batches[i % 2] for i in range(steps)]))}
        _sync(self.device)
        t0 = time.perf_counter()
        train_one_epoch(self.model, data, self.loss, 0, self.optimizer, None, lambda s: 1e-4, None, self.args)
        _sync(self.device)
        return steps * self.batch_size / (time.perf_counter() - t0)

    def flops_per_sample(self) -> float | None:
        """What the loop counted on this model's first step (the figure its log line uses)."""
        from open_clip_train.mfu import counted_flops_per_sample

        return counted_flops_per_sample(self.model)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _utilisation(result: dict, ours: _Bench, ref: _Bench | None, device: str, precision: str) -> None:
    from open_clip_train.mfu import model_flop_utilisation, peak_flops

    peak = peak_flops(device, precision)
    result["peak_tflop_per_s"] = round(peak / 1e12, 4) if peak else None
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    flops = ours.flops_per_sample()
    result["gflop_per_sample"] = round(flops / 1e9, 3)
    result["achieved_tflop_per_s"] = round(flops * result["samples_per_s"] / 1e12, 4)
    mfu = model_flop_utilisation(flops, result["samples_per_s"], peak)
    result["mfu"] = round(mfu, 4) if mfu is not None else None
    if ref is None:
        return
    ref_flops = ref.flops_per_sample()
    result["baseline_gflop_per_sample"] = round(ref_flops / 1e9, 3)
    ref_mfu = model_flop_utilisation(ref_flops, result["baseline_samples_per_s"], peak)
    result["baseline_mfu"] = round(ref_mfu, 4) if ref_mfu is not None else None
    at_3p3 = model_flop_utilisation(ref_flops, result["samples_per_s"], peak)
    result["mfu_at_3p3_flops"] = round(at_3p3, 4) if at_3p3 is not None else None


def bench(model_name: str, precision: str, device: str, batch_size: int, steps: int, warmup: int,
          rounds: int = 1, text: str = "random", baseline: bool = False, compile_model: bool = False) -> dict:
    """Best-of-``rounds`` samples/s of our training step; with ``baseline`` also of a 3.3-like step
    (every token computed, torch's default AdamW, eager) timed in alternation, and their ratio;
    FLOPs per sample and MFU of each."""
    ours = _Bench(model_name, precision, device, batch_size, text, baseline=False, compile_model=compile_model)
    ours.run(warmup)  # also compiles (a few caption-length buckets) and counts the FLOPs
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
              "text": text, "compiled": ours.compiled, "samples_per_s": round(best, 2)}
    if ref is not None:
        result["baseline_samples_per_s"] = round(best_ref, 2)
        result["speedup_vs_baseline"] = round(best / best_ref, 3)
    _utilisation(result, ours, ref, device, precision)
    return result


def _gpu_unavailable_message() -> str | None:
    if torch.cuda.is_available():
        return None
    return (f"benchmarks.train_step --gpu needs a CUDA GPU, and torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}). The same code path on "
            f"CPU, small: python -m benchmarks.train_step --models tiny --precisions amp_bf16 --baseline "
            f"--compile --steps 2 --warmup 2")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true",
                   help="the GPU set-up: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in GPU_PRESET.items())
                   + " (flags given explicitly win)")
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
                   help="also time a 3.3-like step in the same run: all tokens computed, default AdamW, eager")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (as --torchcompile does)")
    args = p.parse_args(argv)
    if args.gpu:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
        for key, value in GPU_PRESET.items():
            if f"--{key.replace('_', '-')}" not in given:
                setattr(args, key, value)
    return args


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.device.startswith("cuda"):
        message = _gpu_unavailable_message()
        if message:
            print(message, file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = True  # as the training app sets it
        torch.backends.cudnn.benchmark = True
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
                result = bench(name, precision, a.device, a.batch_size, a.steps, a.warmup, rounds=a.rounds,
                               text=a.text, baseline=a.baseline, compile_model=a.compile)
                print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
