"""CoCa caption throughput with and without the key/value cache (``generate(use_cache=...)``).

Builds coca_ViT-B-32 with random weights (nothing downloaded), captions a small batch of random
images with greedy decoding and with group beam search, and prints captions/s for both paths
and their ratio, measured in the same run. Also checks that both paths give the same tokens.

    .venv/bin/python -m benchmarks.generate [--images 2] [--seq-len 20] [--repeats 1] [--threads 1]

(Run as a module: `python benchmarks/generate.py` would put benchmarks/ first on sys.path, where
benchmarks/tokenize.py shadows the standard library.) Timings on a shared CPU machine are noisy;
compare the ratio, not the absolute numbers.
"""

import argparse
import statistics
import time

import torch

from open_clip.factory import create_model


def _time(model, images, repeats: int, **kwargs) -> tuple[float, torch.Tensor]:
    out = model.generate(images, **kwargs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.generate(images, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="coca_ViT-B-32")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    size = model.visual.image_size
    images = torch.randn(args.images, 3, *size)

    settings = {
        "greedy (top_k=1)": dict(generation_type="top_k", top_k=1, fixed_output_length=True),
        "beam search (6 beams, 3 groups)": dict(generation_type="beam_search", num_beams=6, num_beam_groups=3),
    }
    print(f"{args.model}, random weights, {args.images} images, seq_len {args.seq_len}, "
          f"{args.threads} threads (shared machine: noisy)")
    for name, kwargs in settings.items():
        results = {}
        for use_cache in (True, False):
            seconds, out = _time(model, images, args.repeats, seq_len=args.seq_len, use_cache=use_cache, **kwargs)
            results[use_cache] = (args.images / seconds, out)
        cached, full = results[True], results[False]
        print(f"{name}: with cache {cached[0]:.2f} captions/s, without {full[0]:.2f} captions/s, "
              f"ratio {cached[0] / full[0]:.2f}x, same tokens: {torch.equal(cached[1], full[1])}, "
              f"length {cached[1].shape[1]}")


if __name__ == "__main__":
    main()
