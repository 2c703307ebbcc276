"""Tokenizer throughput: fast vs reference (pure-Python) ``SimpleTokenizer`` paths, cold and warm.

Usage: python benchmarks/tokenize.py [--captions benchmarks/data/captions.txt] [--rounds 3]

"cold" = a fresh tokenizer object (empty caches) on the whole corpus, "warm" = its second pass.
Shared, one-off costs (imports, reading the vocab file, building the shared BPE model of the
``tokenizers`` package) are paid once before timing and printed separately. Figures are the best
of several runs (reference and fast runs interleaved, so both see the same machine load), in
wall-clock and in process CPU time (CPU time is steadier on a busy machine).
"""

import argparse
import os
import sys

# This file is named like the stdlib `tokenize` module; drop its folder from the import path so
# `import tokenize` (used by linecache, torch, ...) finds the stdlib one.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "src"))  # works without an installed package too

import time  # noqa: E402

import torch  # noqa: E402


def _timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _run_once(texts, fast):
    """One fresh tokenizer: (ids, {phase: (wall_s, cpu_s)}) for a cold and a warm pass."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(fast=fast)
    cold, cold_wall, cold_cpu = _timed(tok, texts)
    warm, warm_wall, warm_cpu = _timed(tok, texts)
    assert torch.equal(cold, warm)
    return cold, {"cold": (cold_wall, cold_cpu), "warm": (warm_wall, warm_cpu)}


def _measure(texts, rounds, fast_per_round):
    """Interleave reference and fast runs so both see the same machine load; keep the best."""
    best = {(fast, phase): [float("inf")] * 2 for fast in (True, False) for phase in ("cold", "warm")}
    same = True
    for _ in range(rounds):
        slow_ids, times = _run_once(texts, fast=False)
        for phase, t in times.items():
            best[False, phase] = [min(b, x) for b, x in zip(best[False, phase], t)]
        for _ in range(fast_per_round):
            fast_ids, times = _run_once(texts, fast=True)
            same = same and torch.equal(fast_ids, slow_ids)
            for phase, t in times.items():
                best[True, phase] = [min(b, x) for b, x in zip(best[True, phase], t)]
    return same, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.path.join(_HERE, "data", "captions.txt")
    parser.add_argument("--captions", default=default)
    parser.add_argument("--rounds", type=int, default=3, help="reference runs (each with fresh caches)")
    parser.add_argument("--fast-per-round", type=int, default=3, help="fast runs per reference run")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with open(args.captions, encoding="utf-8") as f:
        texts = f.read().split("\n")
    if texts and texts[-1] == "":
        texts.pop()

    (_, import_s, _) = _timed(lambda: __import__("open_clip.tokenizer"))
    from open_clip.tokenizer import SimpleTokenizer

    _, build_s, _ = _timed(lambda: SimpleTokenizer(fast=True)(["warm up the shared bpe model"]))
    _, ctor_s, _ = _timed(lambda: SimpleTokenizer())
    print(f"corpus: {len(texts)} texts, {sum(map(len, texts))} characters ({args.captions})")
    print(f"one-off: import {import_s * 1e3:.0f} ms, first fast call incl. shared BPE model "
          f"{build_s * 1e3:.0f} ms; constructing a SimpleTokenizer {ctor_s * 1e3:.0f} ms")

    same, best = _measure(texts, args.rounds, args.fast_per_round)
    print(f"identical ids (fast vs reference): {same}; best of {args.rounds} reference and "
          f"{args.rounds * args.fast_per_round} fast runs, interleaved")
    print(f"{'':8s}{'clock':>6s} {'reference':>14s} {'fast':>14s} {'ratio':>8s}")
    for phase in ("cold", "warm"):
        for k, clock in enumerate(("wall", "cpu")):
            s, f = best[False, phase][k], best[True, phase][k]
            print(f"{phase:8s}{clock:>6s} {len(texts) / s:>10,.0f} t/s {len(texts) / f:>10,.0f} t/s {s / f:>7.1f}x")


if __name__ == "__main__":
    main()
