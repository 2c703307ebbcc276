"""Text-tower throughput with and without exact early stop (trim / length buckets).

Encodes real captions (benchmarks/data/captions.txt, CLIP tokenizer, context 77) with a random-init
text tower of ViT-B-32's width (512, 8 heads; fewer layers by default to keep CPU runs short) and
prints the time per batch for: full-length encoding, early stop (trim to the batch's longest
caption), and early stop with length buckets. Also prints the max difference to the full result.

Usage: python benchmarks/towers_text_early_stop.py [--batch 64] [--layers 6] [--repeats 3]
"""

import argparse
import pathlib
import random
import time

import torch

from open_clip.models.text_transformer import TextTransformer


def load_tokens(batch: int, seed: int) -> torch.Tensor:
    from open_clip.tokenizer import tokenize

    path = pathlib.Path(__file__).parent / "data" / "captions.txt"
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    random.Random(seed).shuffle(lines)
    return tokenize(lines[:batch], context_length=77)


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--buckets", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokens = load_tokens(args.batch, seed=0)
    pooled_at = tokens.argmax(-1)
    print(
        f"batch {args.batch}, context 77, caption lengths (with SOT/EOT): mean {pooled_at.float().mean() + 1:.1f}, "
        f"max {int(pooled_at.max()) + 1}"
    )
    torch.manual_seed(0)
    model = TextTransformer(77, 49408, 512, 8, args.layers, output_dim=512).eval()

    results = {}
    with torch.no_grad():
        for name, early, buckets in (("full", False, 1), ("early_stop", True, 1), ("bucketed", True, args.buckets)):
            model.early_stop, model.early_stop_buckets = early, buckets
            results[name] = (time_it(lambda: model(tokens), args.repeats), model(tokens))
    base_time, base_out = results["full"]
    for name, (seconds, out) in results.items():
        diff = (out - base_out).abs().max().item()
        speed_up = base_time / seconds
        print(f"{name:11s} {seconds * 1000:8.1f} ms/batch   speed-up x{speed_up:5.2f}   max|diff| {diff:.2e}")


if __name__ == "__main__":
    main()
