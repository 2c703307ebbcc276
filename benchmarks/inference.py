"""Inference throughput of a randomly initialised model (default ViT-B-32), fp32 and bf16.

Prints images/s (and the gain of running the last block at the class token only) and captions/s
per precision, and the speed-up of the exact text early stop
(positions after the last EOT are not computed) over full-length encoding, measured in the same run
on real captions from benchmarks/data/captions.txt tokenized with open_clip.tokenizer.

    .venv/bin/python benchmarks/inference.py [--device cuda] [--iters 3] [--threads 2]
    (or: .venv/bin/python -m benchmarks.inference ...)
"""

import pathlib
import sys

# Running a script puts benchmarks/ first on sys.path, where benchmarks/tokenize.py shadows the
# stdlib module torch needs; drop that entry before importing anything else.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or '.').resolve() != _HERE]

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from open_clip.factory import create_model  # noqa: E402
from open_clip.models.clip import get_input_dtype  # noqa: E402
from open_clip.tokenizer import tokenize  # noqa: E402

CAPTIONS = pathlib.Path(__file__).parent / 'data' / 'captions.txt'


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='ViT-B-32')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--precisions', nargs='+', default=['fp32', 'bf16'])
    parser.add_argument('--batch-size', type=int, default=64, help='captions per text batch')
    parser.add_argument('--image-batch-size', type=int, default=32)
    parser.add_argument('--iters', type=int, default=3, help='timed batches per measurement')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    return parser.parse_args()


def caption_batches(batch_size: int, count: int, context_length: int) -> list:
    """`count` consecutive batches of real captions, tokenized."""
    lines = [line.strip() for line in CAPTIONS.read_text(encoding='utf-8').splitlines() if line.strip()]
    needed = batch_size * count
    lines = (lines * (needed // len(lines) + 1))[:needed]
    return [tokenize(lines[i:i + batch_size], context_length=context_length)
            for i in range(0, needed, batch_size)]


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, inputs: list, warmup: int, device: torch.device) -> float:
    """Seconds per call of fn over `inputs` (after `warmup` untimed calls)."""
    for x in inputs[:warmup]:
        fn(x)
    _sync(device)
    start = time.perf_counter()
    for x in inputs[warmup:]:
        fn(x)
    _sync(device)
    return (time.perf_counter() - start) / max(1, len(inputs) - warmup)


def set_early_stop(model: torch.nn.Module, enabled: bool) -> None:
    if hasattr(model, 'text_early_stop'):
        model.text_early_stop = enabled
    else:
        model.text.early_stop = enabled


def _call_time(fn, x, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn(x)
    _sync(device)
    return time.perf_counter() - start


def early_stop_times(model: torch.nn.Module, texts: list, warmup: int, device: torch.device):
    """Median seconds per batch for full-length and early-stop encoding, measured interleaved
    (alternating which goes first) so drift on a shared machine hits both alike."""
    full, early = [], []
    for i, x in enumerate(texts):
        order = (False, True) if i % 2 == 0 else (True, False)
        for enabled in order:
            set_early_stop(model, enabled)
            seconds = _call_time(model.encode_text, x, device)
            if i >= warmup:
                (early if enabled else full).append(seconds)
    set_early_stop(model, True)
    return statistics.median(full), statistics.median(early)


def bench_precision(args, precision: str, device: torch.device) -> None:
    model = create_model(args.model, precision=precision, device=device).eval()
    input_dtype = get_input_dtype(precision) or torch.float32
    size = model.visual.preprocess_cfg['size']
    h, w = size if isinstance(size, (tuple, list)) else (size, size)
    n = args.warmup + args.iters
    images = [torch.randn(args.image_batch_size, 3, h, w, device=device, dtype=input_dtype) for _ in range(n)]
    texts = [t.to(device) for t in caption_batches(args.batch_size, n, model.context_length)]

    with torch.inference_mode():
        model.visual.last_block_pooled_only = False
        image_full_s = timed(model.encode_image, images, args.warmup, device)
        model.visual.last_block_pooled_only = True
        image_s = timed(model.encode_image, images, args.warmup, device)
        full_s, early_s = early_stop_times(model, texts, args.warmup, device)
    kept = sum(int(t.argmax(dim=-1).max()) + 1 for t in texts[args.warmup:]) / args.iters
    print(f'[{args.model} {precision} {device.type}] '
          f'image: {args.image_batch_size / image_s:8.1f} img/s '
          f'(every token through the last block: {args.image_batch_size / image_full_s:.1f}, '
          f'x{image_full_s / image_s:.2f})  |  '
          f'text full-length: {args.batch_size / full_s:8.1f} cap/s  '
          f'early-stop: {args.batch_size / early_s:8.1f} cap/s  |  '
          f'early-stop speed-up x{full_s / early_s:.2f} '
          f'(mean kept length {kept:.1f} of {model.context_length})')


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f'torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, '
          f'text batch {args.batch_size}, image batch {args.image_batch_size}, {args.iters} timed batches')
    for precision in args.precisions:
        bench_precision(args, precision, device)


if __name__ == '__main__':
    main()
