"""Text-tower throughput with and without the exact early stop.

Encodes real captions (benchmarks/data/captions.txt, CLIP tokenizer, context 77, consecutive
batches in file order) with a random-init text tower of ViT-B-32's config (width 512, 12 layers,
8 heads, vocab 49408) in fp32 and prints texts/s for full-length encoding (what OpenCLIP 3.3
computes) and for the early stop (the default), their ratio, and whether the outputs are equal
bit for bit. The modes run interleaved for several rounds and the best round counts (shared
machines are noisy); figures are given for wall-clock time and for process CPU time.

OpenCLIP 3.3 encodes this setup at full length (~33 texts/s measured on the 2-core dev machine);
``--reference`` sets that figure to also print the ratio to it.

Usage: python benchmarks/towers_text_early_stop.py [--batch 64] [--batches 4] [--rounds 3]
       [--layers 12] [--threads 2] [--reference 33]
"""

import argparse
import pathlib
import sys
import time

# benchmarks/tokenize.py would shadow the stdlib module of that name (used by torch / linecache)
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).parent.resolve()]

import torch  # noqa: E402

from open_clip.models.text_transformer import TextTransformer  # noqa: E402

MODES = (("full", False), ("early_stop", True))


def load_batches(batch: int, batches: int) -> list[torch.Tensor]:
    from open_clip.tokenizer import tokenize

    path = pathlib.Path(__file__).parent / "data" / "captions.txt"
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()][: batch * batches]
    tokens = tokenize(lines, context_length=77)
    return list(tokens.split(batch))


def run_mode(model: TextTransformer, batches: list[torch.Tensor]) -> tuple[float, float, list[torch.Tensor]]:
    """Encode all batches once; returns (wall seconds, CPU seconds, outputs)."""
    wall, cpu = time.perf_counter(), time.process_time()
    outs = [model(tokens) for tokens in batches]
    return time.perf_counter() - wall, time.process_time() - cpu, outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", type=float, default=33.0, help="OpenCLIP 3.3 full-length texts/s")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    batches = load_batches(args.batch, args.batches)
    n_texts = sum(b.shape[0] for b in batches)
    lengths = torch.cat([b.argmax(-1) + 1 for b in batches]).float()
    longest = [int(b.argmax(-1).max()) + 1 for b in batches]
    print(
        f"{n_texts} captions in {len(batches)} batches of {args.batch}; length mean {lengths.mean():.1f}, "
        f"batch max {longest}; width 512, {args.layers} layers, {args.threads} threads, fp32"
    )
    torch.manual_seed(0)
    model = TextTransformer(77, 49408, 512, 8, args.layers, output_dim=512).eval()

    best = {name: [float("inf"), float("inf")] for name, _ in MODES}
    outputs = {}
    with torch.no_grad():
        model(batches[0])  # warm-up
        for r in range(args.rounds):
            for k in range(len(MODES)):  # rotate the order each round
                name, early = MODES[(k + r) % len(MODES)]
                model.early_stop = early
                wall, cpu, outputs[name] = run_mode(model, batches)
                best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
                print(f"  round {r} {name:11s} wall {wall:7.2f}s cpu {cpu:7.2f}s", flush=True)

    full_wall, full_cpu = best["full"]
    full_out = torch.cat(outputs["full"])
    print("mode          texts/s(wall)  x full   texts/s(cpu)  x full   bitwise equal to full")
    for name, (wall, cpu) in best.items():
        equal = torch.equal(torch.cat(outputs[name]), full_out)
        print(
            f"{name:12s} {n_texts / wall:13.1f}  {full_wall / wall:6.2f}  {n_texts / cpu:13.1f}  "
            f"{full_cpu / cpu:6.2f}   {equal}"
        )
    early_wall = n_texts / best["early_stop"][0]
    print(
        f"early_stop vs OpenCLIP 3.3 reference {args.reference:.0f} texts/s: x{early_wall / args.reference:.2f} "
        f"(wall; only meaningful when our full path matches the reference: full here "
        f"{n_texts / full_wall:.1f} texts/s)"
    )


if __name__ == "__main__":
    main()
