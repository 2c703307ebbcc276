"""onnxruntime vs torch CPU throughput of the exported encoders (same run, same inputs).

Exports a randomly initialised model (default ViT-B-32) with ``open_clip.export``, then times
images/s and captions/s for torch (eager fp32, as ``encode_image`` / ``encode_text`` run, fast
paths on) and for onnxruntime's CPU provider on the graphs, with the same thread count. Captions
are real lines of benchmarks/data/captions.txt. Prints the figures and the onnxruntime/torch ratio;
for causal text towers also onnxruntime on ids trimmed after the batch's last end token (torch's
eager early stop skips those positions by itself).

    .venv/bin/python benchmarks/onnx_runtime.py [--model ViT-B-32] [--threads 2] [--iters 3]
"""

import pathlib
import sys

# Running a script puts benchmarks/ first on sys.path, where benchmarks/tokenize.py shadows the
# stdlib module torch needs; drop that entry before importing anything else.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or '.').resolve() != _HERE]

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from open_clip.export import export_onnx_from_source, source_from_model  # noqa: E402
from open_clip.factory import create_model, get_model_config, get_tokenizer  # noqa: E402
from open_clip.utils import to_2tuple  # noqa: E402

CAPTIONS = _HERE / 'data' / 'captions.txt'


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='ViT-B-32')
    parser.add_argument('--image-batch-size', type=int, default=16)
    parser.add_argument('--text-batch-size', type=int, default=64)
    parser.add_argument('--iters', type=int, default=3, help='timed batches per measurement')
    parser.add_argument('--threads', type=int, default=2)
    return parser.parse_args()


def best_time(fn, batches: list) -> float:
    """Fastest of the timed calls (after one warm-up call): the least noisy figure on a shared CPU."""
    fn(batches[0])
    times = []
    for batch in batches:
        start = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - start)
    return min(times)


def trim_padding(ids: torch.Tensor) -> torch.Tensor:
    """Drop the zero columns after the batch's last end token (what a deployment would do)."""
    last = int((ids != 0).int().cumsum(1).argmax(1).max())
    return ids[:, :last + 1]


def main() -> None:
    args = parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    tokenizer = get_tokenizer(args.model)
    source = source_from_model(model, get_model_config(args.model), tokenizer, name=args.model)
    lines = [line for line in CAPTIONS.read_text(encoding='utf-8').splitlines() if line.strip()]
    n = args.text_batch_size
    texts = [tokenizer(lines[i * n:(i + 1) * n]) for i in range(args.iters)]
    height, width = to_2tuple(model.visual.image_size)
    images = [torch.randn(args.image_batch_size, 3, height, width) for _ in range(args.iters)]

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = export_onnx_from_source(source, tmp)
        print(f'{args.model}: export + onnxruntime check {time.perf_counter() - start:.1f}s, '
              f'max abs diff {result.max_abs_diff}')
        visual = ort.InferenceSession(str(result.files['visual']), options, providers=['CPUExecutionProvider'])
        text = ort.InferenceSession(str(result.files['text']), options, providers=['CPUExecutionProvider'])
        with torch.no_grad():
            rows = [
                ('images/s', args.image_batch_size, lambda x: model.encode_image(x),
                 lambda x: visual.run(None, {'pixel_values': x.numpy()}), images),
                ('captions/s', args.text_batch_size, lambda t: model.encode_text(t),
                 lambda t: text.run(None, {'input_ids': t.numpy()}), texts),
            ]
            if text.get_inputs()[0].shape[1] == 'sequence':  # causal text: padding columns may be dropped
                rows.append(('captions/s', args.text_batch_size, lambda t: model.encode_text(t),
                             lambda t: text.run(None, {'input_ids': trim_padding(t).numpy()}), texts))
            for i, (unit, batch, torch_fn, ort_fn, batches) in enumerate(rows):
                torch_rate = batch / best_time(torch_fn, batches)
                ort_rate = batch / best_time(ort_fn, batches)
                label = ' (onnxruntime input trimmed to the last end token)' if i == 2 else ''
                print(f'{unit:>10}: torch {torch_rate:8.1f}  onnxruntime {ort_rate:8.1f}  '
                      f'ratio {ort_rate / torch_rate:.2f}x  ({args.threads} threads, batch {batch}){label}')


if __name__ == '__main__':
    main()
