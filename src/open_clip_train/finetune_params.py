"""Command-line flags of ``python -m open_clip_train.finetune`` (the training app's model, precision and
distributed flags, plus the data, optimisation and WiSE-FT flags of classification fine-tuning)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .params import _add_model_flags, _add_runtime_flags, get_default_params

DEFAULT_ALPHAS = ("0", "0.25", "0.5", "0.75", "1")


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (folders with one sub-folder of images per class)")
    g.add_argument("--train-data", required=True, help="Training folder; labels follow the sorted sub-folder names.")
    g.add_argument("--val-data", required=True, help="In-distribution evaluation folder (same class folders).")
    g.add_argument("--ood-data", nargs="+", default=[], metavar="DIR",
                   help="Shifted evaluation folders; results are reported per folder name.")
    g.add_argument("--classnames", default=None,
                   help="File of 'folder<TAB>class name' lines (default: the folder names are the class names).")
    g.add_argument("--templates", default=None,
                   help="File of prompt templates, one per line with {} for the class name "
                        "(default: the OpenAI ImageNet templates).")
    g.add_argument("--batch-size", type=int, default=64, help="Batch size per process.")
    g.add_argument("--workers", type=int, default=2, help="Data loader workers per process.")


def _add_optim_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation (AdamW, cosine schedule, cross-entropy)")
    g.add_argument("--epochs", type=int, default=10, help="Number of epochs.")
    g.add_argument("--lr", type=float, default=3e-5, help="Peak learning rate.")
    g.add_argument("--wd", type=float, default=0.1, help="Weight decay (not on norms, biases and gains).")
    g.add_argument("--warmup", type=int, default=None,
                   help="Warmup steps (default: 10%% of the total number of steps).")
    g.add_argument("--beta1", type=float, default=None, help="Adam beta 1 (default by model, as in training).")
    g.add_argument("--beta2", type=float, default=None, help="Adam beta 2 (default by model, as in training).")
    g.add_argument("--eps", type=float, default=None, help="Adam epsilon (default by model, as in training).")
    g.add_argument("--layer-decay", type=float, default=None,
                   help="Layer-wise LR decay of the image tower (lr * F^(L+1-depth)); default: off.")
    g.add_argument("--grad-clip-norm", type=float, default=None, help="Clip the gradient norm to this value.")
    g.add_argument("--seed", type=int, default=0, help="Random seed.")


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("WiSE-FT and outputs")
    g.add_argument("--wise-ft-alphas", nargs="+", default=list(DEFAULT_ALPHAS), metavar="A",
                   help="Mixing weights evaluated and saved (0 = zero-shot, 1 = fine-tuned); "
                        "default: 0 0.25 0.5 0.75 1.")
    g.add_argument("--output", required=True, help="Output folder (weights, head, results.json, wise_ft.png).")
    g.add_argument("--log-every-n-steps", type=int, default=10, help="Log the loss every n steps.")


def build_parser() -> argparse.ArgumentParser:
    """The fine-tuning command's flag parser."""
    parser = argparse.ArgumentParser(
        description="Fine-tune a CLIP image tower for classification (head from the zero-shot classifier), then "
                    "evaluate and save WiSE-FT interpolations with the zero-shot model.")
    _add_data_flags(parser)
    _add_model_flags(parser)
    _add_optim_flags(parser)
    _add_runtime_flags(parser)
    _add_output_flags(parser)
    return parser


def parse_args(args: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``args`` (None: ``sys.argv``); Adam betas/eps default by model family, as in the training app."""
    parsed = build_parser().parse_args(args)
    for name, value in get_default_params(parsed.model).items():
        if name != "lr" and getattr(parsed, name) is None:
            setattr(parsed, name, value)
    if parsed.force_image_size is not None and len(parsed.force_image_size) == 1:
        parsed.force_image_size = parsed.force_image_size[0]
    return parsed
