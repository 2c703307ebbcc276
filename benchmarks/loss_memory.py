"""Peak memory and time of one forward+backward of the CLIP loss: plain vs tiled (`chunk_size`).

Each case runs in a fresh subprocess so its peak RSS (`ru_maxrss`) belongs to that case alone.
Prints, per case: peak RSS, RSS above the pre-step baseline (torch + inputs), and step time.
Plain cases whose N x N matrices cannot fit in the memory limit are estimated from the measured
bytes per logit, and reported as not run.

    .venv/bin/python benchmarks/loss_memory.py                 # the full table (several minutes)
    .venv/bin/python benchmarks/loss_memory.py --sizes 2048 4096 --tiled-only-sizes
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

DIM = 512
LIMIT_GIB = 24.0


def _rss_mib() -> float:
    # Current resident set size, from /proc (Linux).
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _worker(loss_name: str, n: int, chunk: int | None, threads: int, repeats: int) -> dict:
    import torch

    from open_clip.loss import ClipLoss, SigLipLoss

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(n, DIM, generator=g), torch.randn(n, DIM, generator=g)
    for x in (image, text):  # normalise in place: no input-sized temporaries before the baseline
        x.div_(x.norm(dim=-1, keepdim=True)).requires_grad_()
    scale, bias = torch.tensor(14.3, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    loss_fn = ClipLoss(chunk_size=chunk) if loss_name == "clip" else SigLipLoss(chunk_size=chunk)
    baseline = _rss_mib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss = loss_fn(image, text, scale, bias)
        loss.backward()
        times.append(time.perf_counter() - start)
        image.grad = text.grad = scale.grad = bias.grad = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"peak_mib": peak, "baseline_mib": baseline, "seconds": min(times), "loss": float(loss.detach())}


def _run_case(loss_name: str, n: int, chunk: int | None, threads: int, repeats: int) -> dict:
    # -P: keep benchmarks/ off sys.path (its tokenize.py would shadow the standard library module).
    cmd = [sys.executable, "-P", __file__, "--worker", loss_name, str(n), str(chunk or 0), str(threads), str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(label: str, n: int, r: dict) -> str:
    if "error" in r:
        return f"{label:<14} N={n:>6}  FAILED {r['error']}"
    above = r["peak_mib"] - r["baseline_mib"]
    return (
        f"{label:<14} N={n:>6}  peak RSS {r['peak_mib']:>8.0f} MiB  above baseline {above:>8.0f} MiB"
        f"  time {r['seconds']:>8.2f} s  loss {r['loss']:.6f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", choices=["clip", "siglip"], default="clip")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="*", default=[4096, 8192, 16384], help="plain and tiled")
    parser.add_argument("--tiled-only-sizes", type=int, nargs="*", default=[32768, 65536])
    args = parser.parse_args()

    print(f"{args.loss} loss, D={DIM}, fp32, CPU, {args.threads} threads, chunk_size={args.chunk}")
    bytes_per_logit = None
    results = {}
    for n in args.sizes:
        repeats = 3 if n <= 4096 else 1
        plain = _run_case(args.loss, n, None, args.threads, repeats)
        tiled = _run_case(args.loss, n, args.chunk, args.threads, repeats)
        results[n] = (plain, tiled)
        print(_row("plain", n, plain))
        print(_row(f"tiled({args.chunk})", n, tiled))
        if "error" not in plain and "error" not in tiled:
            extra = plain["peak_mib"] - plain["baseline_mib"]
            bytes_per_logit = extra * 2**20 / n**2
            print(
                f"{'':<14} tiled/plain: peak RSS {tiled['peak_mib'] / plain['peak_mib']:.3f}, above baseline "
                f"{(tiled['peak_mib'] - tiled['baseline_mib']) / max(extra, 1):.3f}, "
                f"time {tiled['seconds'] / plain['seconds']:.2f}x, |loss diff| {abs(tiled['loss'] - plain['loss']):.2e}"
            )
    for n in args.tiled_only_sizes:
        if bytes_per_logit is not None:
            need = bytes_per_logit * n**2 / 2**30
            fits = f"{'would fit' if need < LIMIT_GIB else 'cannot fit'} in {LIMIT_GIB:.0f} GiB"
            print(f"{'plain':<14} N={n:>6}  not run: needs ~{need:.1f} GiB above baseline, {fits}")
        print(_row(f"tiled({args.chunk})", n, _run_case(args.loss, n, args.chunk, args.threads, 1)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        name, n, chunk, threads, repeats = sys.argv[2], *map(int, sys.argv[3:7])
        print(json.dumps(_worker(name, n, chunk or None, threads, repeats)))
    else:
        main()
