"""WiSE-FT weight-space ensembling: ``python -m open_clip_train.wise_ft``.

Owns the interpolation ``theta = (1 - a) * theta_zeroshot + a * theta_finetuned`` of two state dicts
(every floating tensor; other tensors such as integer counters come from the fine-tuned one), the
alpha values and their file names, and the command line that interpolates two checkpoints of one model:

    python -m open_clip_train.wise_ft --model NAME [model flags] --zeroshot A --finetuned B \\
        --alpha 0.5 --output C.safetensors
    python -m open_clip_train.wise_ft --model NAME --zeroshot A --finetuned B --alphas 0 0.5 1 --output DIR
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence

import torch

from .errors import ConfigError

ALPHA_FILE_PATTERN = "wise_ft_alpha_{}.safetensors"


def parse_alpha(text: str, flag: str = "--alpha") -> float:
    """A finite float; the original text is kept for file names (``0.5`` -> ``wise_ft_alpha_0.5``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"{flag} {text}: not a number; give mixing weights such as 0 0.25 0.5 0.75 1.")
    return value


def check_alphas(texts: Sequence[str], flag: str = "--alphas") -> list[float]:
    """Parse every alpha; repeats (which would overwrite each other's files) are an error."""
    if not texts:
        raise ConfigError(f"{flag}: give at least one value, e.g. {flag} 0 0.5 1.")
    values = [parse_alpha(t, flag) for t in texts]
    if len(set(texts)) != len(texts):
        raise ConfigError(f"{flag} {' '.join(texts)}: a value is repeated; list each alpha once.")
    return values


def alpha_filename(text: str) -> str:
    """``wise_ft_alpha_<a>.safetensors`` with ``<a>`` exactly as the user wrote it."""
    return ALPHA_FILE_PATTERN.format(text)


def _interpolate_tensor(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    if alpha == 0:
        return a.clone()
    if alpha == 1 or torch.equal(a, b):
        return b.clone()
    # Float64 arithmetic, rounded once to the tensor's dtype: the correctly rounded mix for fp32/fp16/bf16.
    mixed = a.to(torch.float64) * (1.0 - alpha) + b.to(torch.float64) * alpha
    return mixed.to(b.dtype)


def interpolate_state_dicts(
        zeroshot: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * zeroshot + alpha * finetuned`` for every floating tensor; other tensors from ``finetuned``.

    Both must have the same keys, and floating tensors the same shapes and dtypes; ``alpha`` 0 and 1
    reproduce the inputs bit for bit, and tensors equal in both stay unchanged. Key order follows ``finetuned``.
    """
    missing, extra = sorted(set(finetuned) - set(zeroshot)), sorted(set(zeroshot) - set(finetuned))
    if missing or extra:
        raise ValueError(f"the two checkpoints have different keys (only in the fine-tuned one: {missing[:5]}, "
                         f"only in the zero-shot one: {extra[:5]}); they must come from the same model.")
    out = {}
    for key, b in finetuned.items():
        a = zeroshot[key]
        if not (a.is_floating_point() and b.is_floating_point()):
            out[key] = b.clone()
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"{key}: zero-shot {a.dtype}{tuple(a.shape)} vs fine-tuned {b.dtype}{tuple(b.shape)}; "
                             "load both for the same model and image size (e.g. the same --force-image-size).")
        out[key] = _interpolate_tensor(a, b.to(a.device), alpha)
    return out


def _parser() -> argparse.ArgumentParser:
    from .params import PRECISIONS, _add_model_flags

    p = argparse.ArgumentParser(description="Interpolate a zero-shot and a fine-tuned checkpoint (WiSE-FT).")
    _add_model_flags(p)
    g = p.add_argument_group("WiSE-FT")
    g.add_argument("--zeroshot", required=True, help="Zero-shot weights: a checkpoint file or pretrained tag.")
    g.add_argument("--finetuned", required=True, help="Fine-tuned weights of the same model: a checkpoint file.")
    g.add_argument("--alpha", default=None, help="Weight of the fine-tuned model (0 = zero-shot, 1 = fine-tuned).")
    g.add_argument("--alphas", nargs="+", default=None,
                   help="Several weights; --output is then a folder receiving wise_ft_alpha_<a>.safetensors.")
    g.add_argument("--output", required=True,
                   help="Output file (.safetensors or .pt) for --alpha, a folder for --alphas.")
    g.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="Precision the model is built in before interpolating (default fp32).")
    return p


def _load_weights(args: argparse.Namespace, pretrained: str, flag: str) -> dict[str, torch.Tensor]:
    """The model's state dict after loading ``pretrained`` (a file or tag), with the model flags applied."""
    from open_clip.factory import create_model

    force_image_size = args.force_image_size
    if force_image_size is not None and len(force_image_size) == 1:
        force_image_size = force_image_size[0]
    try:
        model = create_model(args.model, pretrained=pretrained, precision=args.precision, device="cpu",
                             force_quick_gelu=args.force_quick_gelu, force_custom_text=args.force_custom_text,
                             force_patch_dropout=args.force_patch_dropout, force_image_size=force_image_size,
                             force_context_length=args.force_context_length, cache_dir=args.cache_dir,
                             require_pretrained=True)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{flag} {pretrained}: cannot load it into --model {args.model} ({first}).") from e
    return model.state_dict()


def run(argv: Sequence[str] | None = None) -> list[str]:
    """Parse ``argv``, interpolate and write; returns the written paths (raises ConfigError on bad input)."""
    from .weights_io import save_state_dict, weights_format

    args = _parser().parse_args(argv)
    if (args.alpha is None) == (args.alphas is None):
        raise ConfigError("give either --alpha a (one output file) or --alphas a1 a2 ... (--output is a folder).")
    if args.alpha is not None:
        texts, values = [args.alpha], [parse_alpha(args.alpha)]
        try:
            weights_format(args.output)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        paths = [args.output]
    else:
        texts, values = args.alphas, check_alphas(args.alphas)
        if os.path.isfile(args.output):
            raise ConfigError(f"--output {args.output}: is a file; with --alphas give a folder.")
        paths = [os.path.join(args.output, alpha_filename(t)) for t in texts]
    zeroshot = _load_weights(args, args.zeroshot, "--zeroshot")
    finetuned = _load_weights(args, args.finetuned, "--finetuned")
    for text, alpha, path in zip(texts, values, paths):
        try:
            mixed = interpolate_state_dicts(zeroshot, finetuned, alpha)
        except ValueError as e:
            raise ConfigError(f"--zeroshot/--finetuned: {e}") from e
        save_state_dict(mixed, path)
        logging.info(f"alpha {text}: wrote {path}")
    return paths


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line wrapper: exit code 2 with a one-line error for bad input."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(argv)
    except ConfigError as e:
        logging.error(f"Error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
