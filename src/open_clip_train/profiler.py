"""Standalone model profiler: parameter counts (M) and GFLOPs (torch) or GMACs (fvcore) of the full
model and of each tower, with 3.3's functions and result keys.

    python -m open_clip_train.profiler --model ViT-B-32 RN50 [--results-file out.csv] [--device cpu]

``--model all`` profiles every registered config. Inputs are 3.3's: images of ones in the model's
dtype, text of token id 1 (int64) at the model's context length. Counts are of the full computation,
as 3.3 reported them: the text early stop and the pooled-only last image block are switched off
while counting (with all-equal token ids the early stop would compute a single position). Unlike
3.3, a model is profiled once on its device and again on the CPU only if that fails (3.3 always
profiled a second time on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
from collections.abc import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

import open_clip
from open_clip.optional_modules import optional_module_attributes

# `fvcore`: the package or None, as 3.3 exposed it (imported on first read).
__getattr__, __dir__ = optional_module_attributes(__name__, {"fvcore": "fvcore"})

# Module attributes that switch a fast path on (models: text_early_stop; text towers: early_stop;
# ViTs: last_block_pooled_only); profiling counts the full computation instead.
_FAST_PATH_SWITCHES = ("text_early_stop", "early_stop", "last_block_pooled_only")


def count_params(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _device_dtype(model: torch.nn.Module, force_cpu: bool) -> tuple[torch.nn.Module, torch.device, torch.dtype]:
    if force_cpu:
        model = model.to("cpu")
    param = next(model.parameters())
    return model, param.device, param.dtype


def _images(batch_size: int, image_input_size: tuple[int, ...], device, dtype) -> torch.Tensor:
    return torch.ones((batch_size, *image_input_size), device=device, dtype=dtype)  # (B, C, H, W)


def _text(batch_size: int, text_input_size: tuple[int, ...], device) -> torch.Tensor:
    return torch.ones((batch_size, *text_input_size), device=device, dtype=torch.int64)  # (B, L)


@contextlib.contextmanager
def _full_computation(model: torch.nn.Module) -> Iterator[None]:
    """Switch the fast paths off in every submodule that has them, restoring them afterwards."""
    saved = []
    for module in model.modules():
        for name in _FAST_PATH_SWITCHES:
            if getattr(module, name, False) is True:
                saved.append((module, name))
                setattr(module, name, False)
    try:
        yield
    finally:
        for module, name in saved:
            setattr(module, name, True)


def _torch_flops(model: torch.nn.Module, *inputs: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with _full_computation(model), counter, torch.no_grad():
        model(*inputs)
    return float(counter.get_total_flops())


def profile_torch_image(model, image_input_size, batch_size: int = 1, force_cpu: bool = False) -> float:
    """FLOPs per image of ``model(images)`` (an image tower), counted by torch."""
    model, device, dtype = _device_dtype(model, force_cpu)
    return _torch_flops(model, _images(batch_size, image_input_size, device, dtype)) / batch_size


def profile_torch_text(model, text_input_size, batch_size: int = 1, force_cpu: bool = False) -> float:
    """FLOPs per text of ``model(text)`` (a text tower), counted by torch."""
    model, device, _ = _device_dtype(model, force_cpu)
    return _torch_flops(model, _text(batch_size, text_input_size, device)) / batch_size


def profile_torch(model, text_input_size, image_input_size, batch_size: int = 1, force_cpu: bool = False) -> float:
    """FLOPs per (image, text) pair of the full ``model(images, text)``, counted by torch."""
    model, device, dtype = _device_dtype(model, force_cpu)
    images = _images(batch_size, image_input_size, device, dtype)
    return _torch_flops(model, images, _text(batch_size, text_input_size, device)) / batch_size


def _fvcore_counts(model: torch.nn.Module, inputs: tuple, batch_size: int, detailed: bool) -> tuple[float, float]:
    try:
        from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis, flop_count_str
    except ImportError as e:
        raise ImportError("The fvcore profiler needs the `fvcore` package: pip install fvcore") from e
    with _full_computation(model), torch.no_grad():
        flops = FlopCountAnalysis(model, inputs)
        acts = ActivationCountAnalysis(model, inputs)
        if detailed:
            print(flop_count_str(flops))
        # fvcore counts one multiply-add as one "flop": these are MACs.
        return flops.total() / batch_size, acts.total() / batch_size


def profile_fvcore(
    model, image_input_size=(3, 224, 224), text_input_size=(77,), batch_size: int = 1, detailed: bool = False,
    force_cpu: bool = False,
) -> tuple[float, float]:
    """(MACs, activations) per pair of the full model, counted by fvcore."""
    model, device, dtype = _device_dtype(model, force_cpu)
    inputs = (_images(batch_size, image_input_size, device, dtype), _text(batch_size, text_input_size, device))
    return _fvcore_counts(model, inputs, batch_size, detailed)


def profile_fvcore_text(
    model, text_input_size=(77,), batch_size: int = 1, detailed: bool = False, force_cpu: bool = False
) -> tuple[float, float]:
    """(MACs, activations) per text of a text tower, counted by fvcore."""
    model, device, _ = _device_dtype(model, force_cpu)
    return _fvcore_counts(model, (_text(batch_size, text_input_size, device),), batch_size, detailed)


def profile_fvcore_image(
    model, image_input_size=(3, 224, 224), batch_size: int = 1, detailed: bool = False, force_cpu: bool = False
) -> tuple[float, float]:
    """(MACs, activations) per image of an image tower, counted by fvcore."""
    model, device, dtype = _device_dtype(model, force_cpu)
    return _fvcore_counts(model, (_images(batch_size, image_input_size, device, dtype),), batch_size, detailed)


def _input_sizes(model) -> tuple[tuple[int, int, int], tuple[int]]:
    size = model.visual.image_size
    height, width = tuple(size)[-2:] if isinstance(size, (tuple, list)) else (size, size)
    context_length = getattr(model, "context_length", None) or 77
    return (3, height, width), (context_length,)


def _config_widths(model_name: str) -> dict:
    cfg = open_clip.get_model_config(model_name)
    if not cfg:
        return {"image_width": 0, "text_width": 0, "embed_dim": 0}
    vision = open_clip.CLIPVisionCfg(**cfg["vision_cfg"])
    text = open_clip.CLIPTextCfg(**cfg["text_cfg"])
    return {"image_width": int(vision.width), "text_width": int(text.width), "embed_dim": int(cfg["embed_dim"])}


def _counts(model, image_size, text_size, batch_size: int, profiler: str, force_cpu: bool) -> dict:
    kw = dict(batch_size=batch_size, force_cpu=force_cpu)
    if profiler == "fvcore":
        macs, acts = profile_fvcore(model, image_input_size=image_size, text_input_size=text_size, **kw)
        image_macs, image_acts = profile_fvcore_image(model.visual, image_input_size=image_size, **kw)
        text_macs, text_acts = profile_fvcore_text(model.text, text_input_size=text_size, **kw)
        return {
            "gmacs": round(macs / 1e9, 2), "macts": round(acts / 1e6, 2),
            "image_gmacs": round(image_macs / 1e9, 2), "image_macts": round(image_acts / 1e6, 2),
            "text_gmacs": round(text_macs / 1e9, 2), "text_macts": round(text_acts / 1e6, 2),
        }  # fmt: skip
    image_flops = profile_torch_image(model.visual, image_input_size=image_size, **kw)
    text_flops = profile_torch_text(model.text, text_input_size=text_size, **kw)
    total_flops = profile_torch(model, image_input_size=image_size, text_input_size=text_size, **kw)
    return {
        "gflops": round(total_flops / 1e9, 2),
        "image_gflops": round(image_flops / 1e9, 2),
        "text_gflops": round(text_flops / 1e9, 2),
    }


def profile_model(model_name: str, batch_size: int = 1, profiler: str = "torch", device: str = "cuda") -> dict:
    """One row of 3.3's profile table for ``model_name``: sizes, params (M), and GFLOPs (torch) or
    GMACs and M-activations (fvcore) of the full model, image tower and text tower.

    The model is built with ``force_custom_text=True`` (so ``model.text`` is the text tower) and
    random weights, on ``device`` (CPU when CUDA is asked for but missing).
    """
    if profiler not in ("torch", "fvcore"):
        raise ValueError(f"profiler must be 'torch' or 'fvcore', got {profiler!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    model = open_clip.create_model(model_name, force_custom_text=True, pretrained_hf=False).to(device).eval()
    image_size, text_size = _input_sizes(model)
    results = {"model": model_name, "image_size": image_size[1], **_config_widths(model_name)}
    results["mparams"] = round(count_params(model) / 1e6, 2)
    results["image_mparams"] = round(count_params(model.visual) / 1e6, 2)
    results["text_mparams"] = round(count_params(model.text) / 1e6, 2)
    try:
        results.update(_counts(model, image_size, text_size, batch_size, profiler, force_cpu=False))
    except RuntimeError as e:  # e.g. out of device memory: count on the CPU instead
        logging.warning(f"Profiling {model_name} on {device} failed ({e}); retrying on the CPU.")
        results.update(_counts(model, image_size, text_size, batch_size, profiler, force_cpu=True))
    return results


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

    names = open_clip.list_models() if args.model in ("all", ["all"]) else list(args.model)
    rows = []
    for name in names:
        try:
            row = profile_model(name, args.batch_size, args.profiler, args.device)
        except Exception as e:  # one unsupported model must not stop a profile of all of them
            logging.error(f"Error profiling {name}: {e}")
            continue
        print(row, flush=True)
        rows.append(row)
    sort_key = "gmacs" if args.profiler == "fvcore" else "gflops"
    rows.sort(key=lambda r: r.get(sort_key, 0.0))
    if args.results_file and rows:
        with open(args.results_file, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
