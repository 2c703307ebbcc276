"""Standalone model profiler: parameter counts (M) and GFLOPs/GMACs of full model and towers.

    python -m open_clip_train.profiler --model ViT-B-32 RN50 [--results-file out.csv] [--device cpu]

``--model all`` profiles every registered config. Counts use torch's FlopCounterMode
(``--profiler torch``) or fvcore when installed (``--profiler fvcore``). Unlike 3.3, a model is
profiled once (3.3's retry loop always profiled a second time on the CPU).
"""

from __future__ import annotations

import argparse
import csv
import logging

import torch


def _count_params(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def _flops(fn) -> float:
    """FLOPs (multiply-adds count 2) of calling ``fn()``, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())


def _fvcore_flops(module, inputs) -> float:
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as e:
        raise SystemExit("--profiler fvcore needs the `fvcore` package (pip install fvcore).") from e
    # fvcore counts one multiply-add as one flop; report on the same 2-per-MAC scale as torch.
    return 2.0 * FlopCountAnalysis(module, inputs).total()


def profile_model(model_name: str, batch_size: int = 1, profiler: str = "torch", device: str = "cpu") -> dict:
    """Params (M) and GFLOPs/GMACs per sample for the full model, image tower and text tower."""
    from open_clip.factory import create_model

    model = create_model(model_name, force_custom_text=True, pretrained_hf=False).to(device).eval()
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    images = torch.randn(batch_size, 3, *size, device=device)
    texts = torch.randint(0, 100, (batch_size, model.context_length), device=device)
    parts = {
        "": (lambda: model(images, texts), model, (images, texts)),
        "image_": (lambda: model.encode_image(images), model.visual, (images,)),
        "text_": (lambda: model.encode_text(texts), None, None),
    }
    result = {"model": model_name, "params": round(_count_params(model), 2),
              "image_params": round(_count_params(model.visual), 2)}
    result["text_params"] = round(result["params"] - result["image_params"], 2)
    for prefix, (fn, module, inputs) in parts.items():
        if profiler == "fvcore" and module is not None:
            flops = _fvcore_flops(module, inputs)
        else:
            flops = _flops(fn)
        result[f"{prefix}gflops"] = round(flops / batch_size / 1e9, 2)
        result[f"{prefix}gmacs"] = round(flops / batch_size / 2e9, 2)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="OpenCLIP Profiler")
    parser.add_argument("--model", metavar="NAME", default="", nargs="+",
                        help="model(s) to profile, or 'all'")
    parser.add_argument("--results-file", default="", type=str, metavar="FILENAME",
                        help="Output csv file for results")
    parser.add_argument("--profiler", default="torch", type=str, choices=["torch", "fvcore"])
    parser.add_argument("--batch-size", default=1, type=int, help="Batch size for profiling")
    parser.add_argument("--device", default="cuda", type=str)
    args = parser.parse_args(argv)
    from open_clip.config_registry import list_models

    names = list_models() if args.model in ("all", ["all"]) else list(args.model)
    device = args.device if (args.device != "cuda" or torch.cuda.is_available()) else "cpu"
    rows = []
    for name in names:
        try:
            row = profile_model(name, args.batch_size, args.profiler, device)
        except Exception as e:  # one unsupported model must not stop a profile of all of them
            logging.error(f"Error profiling {name}: {e}")
            continue
        print(row, flush=True)
        rows.append(row)
    if args.results_file and rows:
        with open(args.results_file, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
