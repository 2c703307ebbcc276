"""Command-line flags of the training app: the only module that sees argparse.

Every flag of OpenCLIP 3.3 keeps its name, type and default; flags are grouped for ``--help``.
New flags: ``--save-every-n-steps``, ``--keep-step-checkpoints``, ``--max-nonfinite-steps``,
``--loss-chunk-size``, ``--data-max-bad-fraction``, ``--data-stall-timeout`` and ``--slurm-requeue``;
``--layer-decay``, ``--lr-image``, ``--lr-text``, ``--wd-image``, ``--wd-text``
(per-layer and per-tower learning rates), and ``--dataset-type imagefolder`` with ``--classnames`` /
``--templates`` (class folders as image-caption pairs).
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Sequence

PRECISIONS = ("amp", "amp_bf16", "amp_bfloat16", "bf16", "fp16", "pure_bf16", "pure_fp16", "fp32")
LR_SCHEDULERS = ("cosine", "const", "const-cooldown")


def get_default_params(model_name: str) -> dict:
    """Default lr/betas/eps by model family: ViT-like names use beta2 0.98 and eps 1e-6."""
    if "vit" in model_name.lower():
        return {"lr": 5.0e-4, "beta1": 0.9, "beta2": 0.98, "eps": 1.0e-6}
    return {"lr": 5.0e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1.0e-8}


class ParseKwargs(argparse.Action):
    """Turn ``k=v`` tokens into a dict; values go through ``ast.literal_eval`` when they can."""

    def __call__(self, parser, namespace, values, option_string=None):
        kw = {}
        for value in values:
            key, value = value.split("=")  # exactly one '=' per token, as in 3.3
            try:
                kw[key] = ast.literal_eval(value)
            except ValueError:
                kw[key] = str(value)  # plain words such as `pixel` stay strings
        setattr(namespace, self.dest, kw)


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--train-data", type=str, default=None,
                   help="Path to file(s) with training data. For webdataset, join several sources with '::'.")
    g.add_argument("--train-data-upsampling-factors", type=str, default=None,
                   help="'::'-separated sampling weights per source (e.g. 1::2::0.5); needs "
                        "--dataset-resampled.")
    g.add_argument("--val-data", type=str, default=None, help="Path to file(s) with validation data.")
    g.add_argument("--train-num-samples", type=int, default=None,
                   help="Number of samples per epoch (required for webdataset without a size file).")
    g.add_argument("--val-num-samples", type=int, default=None,
                   help="Number of validation samples (webdataset bookkeeping).")
    g.add_argument("--dataset-type", choices=["webdataset", "csv", "synthetic", "auto", "imagefolder"],
                   default="auto",
                   help="Which type of dataset to process. imagefolder: one sub-folder per class, captioned "
                        "'template(class name)' with a random template per sample (FLYP-style fine-tuning).")
    g.add_argument("--classnames", type=str, default=None,
                   help="imagefolder: file of 'folder<TAB>class name' lines (default: the folder names).")
    g.add_argument("--templates", type=str, default=None,
                   help="imagefolder: file of prompt templates, one per line with {} for the class name "
                        "(default: the OpenAI ImageNet templates).")
    g.add_argument("--dataset-resampled", default=False, action="store_true",
                   help="Whether to use sampling with replacement for webdataset shard selection.")
    g.add_argument("--csv-separator", type=str, default="\t", help="For csv-like datasets, which separator.")
    g.add_argument("--csv-img-key", type=str, default="filepath",
                   help="For csv-like datasets, the name of the key for the image paths.")
    g.add_argument("--csv-caption-key", type=str, default="title",
                   help="For csv-like datasets, the name of the key for the captions.")
    g.add_argument("--imagenet-val", type=str, default=None,
                   help="Path to imagenet val set (ImageFolder layout) for zero-shot evaluation.")
    g.add_argument("--imagenet-v2", type=str, default=None,
                   help="Path to imagenet v2 for zero-shot evaluation.")
    g.add_argument("--workers", type=int, default=4, help="Number of dataloader workers per GPU.")
    g.add_argument("--batch-size", type=int, default=64, help="Batch size per GPU.")
    g.add_argument("--data-max-bad-fraction", type=float, default=0.1,
                   help="Stop with an error when more than this fraction of samples fail to load.")
    g.add_argument("--data-stall-timeout", type=float, default=600, metavar="SECONDS",
                   help="Stop with a 'stall' error (and every thread's stack in the log) when the training "
                        "loop waited this long for its next batch, or a collective for a peer rank; 0 disables.")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", type=str, default="RN50", help="Name of the vision backbone to use.")
    g.add_argument("--pretrained", default="", type=str,
                   help="Use a pretrained CLIP model weights with the specified tag or file path.")
    g.add_argument("--pretrained-image", default=False, action="store_true",
                   help="Load imagenet pretrained weights for image tower backbone if available.")
    g.add_argument("--cache-dir", type=str, default=None,
                   help="Override system default cache path for model & tokenizer file downloads.")
    g.add_argument("--lock-image", default=False, action="store_true",
                   help="Lock full image tower by disabling gradients.")
    g.add_argument("--lock-image-unlocked-groups", type=int, default=0,
                   help="Leave last n image tower layer groups unlocked.")
    g.add_argument("--lock-image-freeze-bn-stats", default=False, action="store_true",
                   help="Freeze BatchNorm running stats in image tower for any locked layers.")
    g.add_argument("--lock-text", default=False, action="store_true",
                   help="Lock full text tower by disabling gradients.")
    g.add_argument("--lock-text-unlocked-layers", type=int, default=0,
                   help="Leave last n text tower layer groups unlocked.")
    g.add_argument("--lock-text-freeze-layer-norm", default=False, action="store_true",
                   help="Freeze LayerNorm running stats in text tower for any locked layers.")
    g.add_argument("--image-mean", type=float, nargs="+", default=None, metavar="MEAN",
                   help="Override default image mean value of dataset")
    g.add_argument("--image-std", type=float, nargs="+", default=None, metavar="STD",
                   help="Override default image std deviation of of dataset")
    g.add_argument("--image-interpolation", default=None, type=str, choices=["bicubic", "bilinear", "random"],
                   help="Override default image resize interpolation")
    g.add_argument("--image-resize-mode", default=None, type=str, choices=["shortest", "longest", "squash"],
                   help="Override default image resize (& crop) mode during inference")
    g.add_argument("--aug-cfg", nargs="*", default={}, action=ParseKwargs,
                   help="Train augmentation config as k=v pairs (e.g. scale='(0.4,1.0)' re_mode=pixel).")
    g.add_argument("--grad-checkpointing", default=False, action="store_true",
                   help="Enable gradient checkpointing.")
    g.add_argument("--force-context-length", type=int, default=None,
                   help="Override default context length (model and tokenizer).")
    g.add_argument("--force-image-size", type=int, nargs="+", default=None, help="Override default image size")
    g.add_argument("--force-quick-gelu", default=False, action="store_true",
                   help="Force use of QuickGELU activation for non-OpenAI transformer models.")
    g.add_argument("--force-patch-dropout", default=None, type=float,
                   help="Override the patch dropout during training, for fine tuning with no dropout "
                        "near the end as in the paper")
    g.add_argument("--force-custom-text", default=False, action="store_true",
                   help="Force use of CustomTextCLIP model (separate text-tower).")
    g.add_argument("--torchscript", default=False, action="store_true",
                   help="torch.jit.script the model, also uses jit version of OpenAI models if pretrained=='openai'")
    g.add_argument("--torchcompile", default=False, action="store_true",
                   help="torch.compile() the model, requires pytorch 2.0 or later.")
    g.add_argument("--trace", default=False, action="store_true",
                   help="torch.jit.trace the model for inference / eval only")
    g.add_argument("--use-bnb-linear", default=None,
                   help="Replace the network linear layers from the bitsandbytes library "
                        "(e.g. SwitchBackLinearGlobal). Allows int8 training/inference, etc.")
    g.add_argument("--siglip", default=False, action="store_true",
                   help="Use SigLip (sigmoid) loss.")


def _add_loss_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loss")
    g.add_argument("--local-loss", default=False, action="store_true",
                   help="calculate loss w/ local features @ global (instead of realizing full global @ global "
                        "matrix)")
    g.add_argument("--gather-with-grad", default=False, action="store_true",
                   help="enable full distributed gradient for feature gather")
    g.add_argument("--loss-dist-impl", default=None, type=str,
                   help="A string to specify a specific distributed loss implementation.")
    g.add_argument("--coca-caption-loss-weight", type=float, default=2.0,
                   help="Weight assigned to caption loss in CoCa.")
    g.add_argument("--coca-contrastive-loss-weight", type=float, default=1.0,
                   help="Weight assigned to contrastive loss when training CoCa.")
    g.add_argument("--loss-chunk-size", type=int, default=None,
                   help="Compute the contrastive loss in chunks of this many rows (saves memory); "
                        "default: one chunk.")


def _add_optim_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=32, help="Number of epochs to train for.")
    g.add_argument("--epochs-cooldown", type=int, default=None,
                   help="When scheduler w/ cooldown used, perform cooldown from total_epochs - cooldown_epochs "
                        "onwards.")
    g.add_argument("--lr", type=float, default=None, help="Learning rate.")
    g.add_argument("--beta1", type=float, default=None, help="Adam beta 1.")
    g.add_argument("--beta2", type=float, default=None, help="Adam beta 2.")
    g.add_argument("--eps", type=float, default=None, help="Adam epsilon.")
    g.add_argument("--wd", type=float, default=0.2, help="Weight decay.")
    g.add_argument("--layer-decay", type=float, default=None,
                   help="Layer-wise LR decay F: a parameter at depth d of a tower with L blocks gets "
                        "lr * F^(L+1-d) (embeddings d=0, block i d=i+1, top d=L+1). Default: off.")
    g.add_argument("--lr-image", type=float, default=None, help="Base learning rate of the image tower (default --lr).")
    g.add_argument("--lr-text", type=float, default=None, help="Base learning rate of the text tower (default --lr).")
    g.add_argument("--wd-image", type=float, default=None, help="Weight decay of the image tower (default --wd).")
    g.add_argument("--wd-text", type=float, default=None, help="Weight decay of the text tower (default --wd).")
    g.add_argument("--momentum", type=float, default=None, help="Momentum (for timm optimizers).")
    g.add_argument("--warmup", type=int, default=10000, help="Number of steps to warmup for.")
    g.add_argument("--opt", type=str, default="adamw",
                   help="Which optimizer to use. Choices are ['adamw', or any timm optimizer 'timm/{opt_name}'].")
    g.add_argument("--use-bn-sync", default=False, action="store_true", help="Whether to use batch norm sync.")
    g.add_argument("--skip-scheduler", action="store_true", default=False,
                   help="Use this flag to skip the learning rate decay.")
    g.add_argument("--lr-scheduler", type=str, default="cosine",
                   help="LR scheduler. One of: 'cosine', 'const' (constant), 'const-cooldown' (constant w/ "
                        "cooldown). Default: cosine")
    g.add_argument("--lr-cooldown-end", type=float, default=0.0,
                   help="End learning rate for cooldown schedule. Default: 0")
    g.add_argument("--lr-cooldown-power", type=float, default=1.0,
                   help="Power for polynomial cooldown schedule. Default: 1.0 (linear decay)")
    g.add_argument("--accum-freq", type=int, default=1, help="Update the model every --accum-freq steps.")
    g.add_argument("--grad-clip-norm", type=float, default=None, help="Gradient clip.")
    g.add_argument("--seed", type=int, default=0, help="Default random seed.")
    g.add_argument("--max-nonfinite-steps", type=int, default=10,
                   help="Skip steps whose loss is not finite; stop with an error after this many in a row.")


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("precision")
    g.add_argument("--precision", choices=list(PRECISIONS), default="amp", help="Floating point precision.")
    g = p.add_argument_group("distributed")
    g.add_argument("--device", default="cuda", type=str, help="Accelerator to use.")
    g.add_argument("--dist-url", default=None, type=str, help="url used to set up distributed training")
    g.add_argument("--dist-backend", default=None, type=str,
                   help='distributed backend. "nccl" for GPU, "hccl" for Ascend NPU')
    g.add_argument("--horovod", default=False, action="store_true", help="Use horovod for distributed training.")
    g.add_argument("--ddp-static-graph", default=False, action="store_true",
                   help="Enable static graph optimization for DDP in PyTorch >= 1.11.")
    g.add_argument("--fsdp", default=False, action="store_true",
                   help="Shard the model, gradients and optimizer state over the processes with FSDP2 "
                        "(torch.distributed.fsdp.fully_shard) instead of DDP; checkpoints also get a "
                        "sharded checkpoints/<name>.dcp/ folder. Without torchrun: a world of 1.")
    g.add_argument("--no-set-device-rank", default=False, action="store_true",
                   help="Don't set device index from local rank (when CUDA_VISIBLE_DEVICES restricted to one "
                        "per proc).")


def _add_logging_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("logging")
    g.add_argument("--logs", type=str, default="./logs/",
                   help="Where to store tensorboard logs. Use None to avoid storing logs.")
    g.add_argument("--log-local", action="store_true", default=False,
                   help="log files on local master, otherwise global master only.")
    g.add_argument("--name", type=str, default=None,
                   help="Optional identifier for the experiment when storing logs. Otherwise use current time.")
    g.add_argument("--report-to", default="", type=str,
                   help="Options are ['wandb', 'tensorboard', 'wandb,tensorboard']")
    g.add_argument("--wandb-notes", default="", type=str, help="Notes if logging with wandb")
    g.add_argument("--wandb-project-name", type=str, default="open-clip",
                   help="Name of the project if logging with wandb.")
    g.add_argument("--debug", default=False, action="store_true", help="If true, more information is logged.")
    g.add_argument("--log-every-n-steps", type=int, default=100,
                   help="Log every n steps to tensorboard/console/wandb.")
    g.add_argument("--copy-codebase", default=False, action="store_true",
                   help="If true, we copy the entire base on the log directory, and execute from there.")


def _add_checkpoint_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpointing")
    g.add_argument("--save-frequency", type=int, default=1, help="How often to save checkpoints.")
    g.add_argument("--save-most-recent", action="store_true", default=False,
                   help="Always save the most recent model trained to epoch_latest.pt.")
    g.add_argument("--save-every-n-steps", type=int, default=0,
                   help="Also save checkpoints/step_<global step>.pt every n optimizer steps (0 = off); "
                        "these carry the data position so training resumes mid-epoch.")
    g.add_argument("--resume", default=None, type=str,
                   help="path to latest checkpoint, or 'latest' (default: none)")
    g.add_argument("--delete-previous-checkpoint", default=False, action="store_true",
                   help="If true, delete previous checkpoint after storing a new one.")
    g.add_argument("--keep-step-checkpoints", type=int, default=1, metavar="N",
                   help="Keep only the newest N step_<global step>.pt files (0 keeps all); older ones are "
                        "deleted once the new one is safely on disk.")
    g.add_argument("--slurm-requeue", default=False, action="store_true",
                   help="After a preemption checkpoint (SIGTERM/SIGUSR1), rank 0 runs `scontrol requeue "
                        "$SLURM_JOB_ID` when SLURM_JOB_ID is set.")
    g.add_argument("--remote-sync", type=str, default=None,
                   help="Optinoally sync with a remote path specified by this arg")
    g.add_argument("--remote-sync-frequency", type=int, default=300,
                   help="How frequently to sync to a remote directly if --remote-sync is not None.")
    g.add_argument("--remote-sync-protocol", choices=["s3", "fsspec"], default="s3",
                   help="How to do the remote sync backup if --remote-sync is not None.")
    g = p.add_argument_group("eval")
    g.add_argument("--zeroshot-frequency", type=int, default=2, help="How often to run zero shot.")
    g.add_argument("--val-frequency", type=int, default=1, help="How often to run evaluation with val data.")
    g = p.add_argument_group("distillation")
    g.add_argument("--distill-model", default=None, help="Which model arch to distill from, if any.")
    g.add_argument("--distill-pretrained", default=None, help="Which pre-trained weights to distill from, if any.")


def build_parser() -> argparse.ArgumentParser:
    """The full flag parser (abbreviated prefixes such as ``--save-freq`` are accepted, as in 3.3)."""
    parser = argparse.ArgumentParser(description="Train or evaluate CLIP-style models (OpenCLIP 3.3 flags).")
    _add_data_flags(parser)
    _add_model_flags(parser)
    _add_loss_flags(parser)
    _add_optim_flags(parser)
    _add_runtime_flags(parser)
    _add_logging_flags(parser)
    _add_checkpoint_flags(parser)
    return parser


def parse_args(args: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``args`` (``None`` reads ``sys.argv``) and fill model-dependent optimizer defaults.

    With a ``timm/...`` optimizer lr/betas/eps stay ``None`` as in 3.3 (the app later fills a
    missing ``lr`` so the schedule never sees ``None``).
    """
    parsed = build_parser().parse_args(args)
    defaults = get_default_params(parsed.model)
    if "timm" not in parsed.opt:
        for name, value in defaults.items():
            if getattr(parsed, name) is None:
                setattr(parsed, name, value)
    return parsed
