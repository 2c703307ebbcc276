"""Classification fine-tuning with WiSE-FT: ``python -m open_clip_train.finetune``.

Wiring only: read the class folders, build the model with the training app's model flags, start the
head from the zero-shot classifier (class names x templates), fine-tune the image tower end to end
(cross-entropy, AdamW, cosine schedule with warmup), then evaluate every WiSE-FT mix of the zero-shot
and fine-tuned weights and write, into ``--output``:

    finetuned.safetensors, wise_ft_alpha_<a>.safetensors   open_clip checkpoints (usable as pretrained=)
    head.safetensors                                        the head (see classifier_head.load_head)
    results.json, wise_ft.png, out.log

Runs under torchrun (each process trains on its share; evaluation counts are summed over processes).
"""

from __future__ import annotations

import copy
import logging
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .classifier_head import ImageClassifier, head_metadata, head_state, zero_shot_head
from .data.class_folders import class_folders, labelled_images, read_classnames, read_templates
from .distributed import init_distributed_device_so
from .errors import ConfigError, TrainingError
from .finetune_data import eval_loader, train_loader
from .finetune_loop import accuracy, train_classifier
from .finetune_outputs import ood_names, plot_wise_ft, results_dict, write_results
from .finetune_params import parse_args
from .logger import setup_logging
from .optim import create_optimizer, create_scaler
from .precision import get_autocast
from .scheduler import cosine_lr
from .weights_io import save_state_dict
from .wise_ft import alpha_filename, check_alphas, interpolate_state_dicts

_UNSUPPORTED = (("torchscript", "--torchscript"), ("trace", "--trace"), ("torchcompile", "--torchcompile"),
                ("use_bnb_linear", "--use-bnb-linear"), ("horovod", "--horovod"))


@dataclass
class Folders:
    """The labelled images of every split, labelled with the training folder's classes."""

    classnames: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    ood: dict[str, list[tuple[str, int]]]


def _validate(args) -> list[float]:
    for attr, flag in _UNSUPPORTED:
        if getattr(args, attr):
            raise ConfigError(f"{flag}: not supported by the fine-tuning command; drop it.")
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--workers", args.workers, 0), ("--log-every-n-steps", args.log_every_n_steps, 1)):
        if value < low:
            raise ConfigError(f"{flag} {value}: must be >= {low}.")
    if args.warmup is not None and args.warmup < 0:
        raise ConfigError(f"--warmup {args.warmup}: must be >= 0 (default: 10% of the steps).")
    if args.lr < 0:
        raise ConfigError(f"--lr {args.lr}: must be >= 0.")
    if os.path.isfile(args.output):
        raise ConfigError(f"--output {args.output}: is a file; give a folder for the fine-tuning outputs.")
    return check_alphas(args.wise_ft_alphas, "--wise-ft-alphas")


def _read_folders(args) -> Folders:
    try:
        classes = class_folders(args.train_data, "--train-data")
        classnames = read_classnames(args.classnames, classes)
        ood = dict(zip(ood_names(args.ood_data),
                       (labelled_images(p, classes, "--ood-data") for p in args.ood_data)))
        return Folders(classnames, labelled_images(args.train_data, classes, "--train-data"),
                       labelled_images(args.val_data, classes, "--val-data"), ood)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ConfigError(str(e)) from e


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _cpu_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def run(argv=None) -> dict:
    """Fine-tune and evaluate as ``argv`` says; returns the results dict (raises ConfigError / TrainingError)."""
    args = parse_args(argv)
    setup_logging(None, logging.INFO)
    alphas = _validate(args)
    info = init_distributed_device_so(device=args.device, dist_backend=args.dist_backend, dist_url=args.dist_url,
                                      no_set_device_rank=args.no_set_device_rank)
    device, rank, world = torch.device(info["device"]), info["global_rank"], info["world_size"]
    args.device, args.rank, args.world_size, args.distributed = info["device"], rank, world, info["distributed"]
    master = rank == 0
    if master:
        os.makedirs(args.output, exist_ok=True)
    setup_logging(os.path.join(args.output, "out.log") if master else None,
                  logging.INFO if master else logging.WARNING)
    data = _read_folders(args)
    templates = _read_templates(args.templates)

    # ---- model: the zero-shot CLIP and the classifier head built from it
    _seed(args.seed)
    model, classifier, zeroshot_head, preprocess_train, preprocess_val = _build_classifier(args, data, templates,
                                                                                           device)
    zeroshot_weights = _cpu_copy(model)
    logging.info(f"{len(data.classnames)} classes, {len(data.train)} training images, "
                 f"{len(data.val)} validation images, OOD sets: {list(data.ood) or 'none'}; {world} process(es).")

    # ---- fine-tune
    _seed(args.seed + rank)
    loader = train_loader(data.train, preprocess_train, batch_size=args.batch_size, workers=args.workers,
                          seed=args.seed, rank=rank, world_size=world)
    trained = classifier
    if args.distributed:
        trained = torch.nn.parallel.DistributedDataParallel(
            classifier, device_ids=None if device.type == "cpu" else [device])
    optimizer = create_optimizer(trained, "adamw", lr=args.lr, wd=args.wd, beta1=args.beta1, beta2=args.beta2,
                                 eps=args.eps, layer_decay=args.layer_decay)
    total_steps = len(loader) * args.epochs
    warmup = args.warmup if args.warmup is not None else int(0.1 * total_steps)
    logging.info(f"{total_steps} steps ({len(loader)} per epoch), warmup {warmup}, lr {args.lr}.")
    train_classifier(trained, loader, optimizer, cosine_lr(optimizer, args.lr, warmup, total_steps),
                     epochs=args.epochs, precision=args.precision, device=device,
                     scaler=create_scaler(args.precision, device), grad_clip_norm=args.grad_clip_norm,
                     log_every_n_steps=args.log_every_n_steps, log=master)

    # ---- WiSE-FT: evaluate and save every mix
    results = _wise_ft(args, alphas, data, model, classifier, zeroshot_weights, zeroshot_head, preprocess_val,
                       device, master)
    if args.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return results


def _build_classifier(args, data: Folders, templates: list, device: torch.device) -> tuple:
    """``(clip model, ImageClassifier over its image tower, copy of the zero-shot head, train/val transforms)``."""
    from open_clip.factory import get_tokenizer

    from .model_setup import apply_locks, create_models

    args.distill = False
    model, preprocess_train, preprocess_val, _ = create_models(args, device)
    apply_locks(model, args)  # --lock-image (a linear probe), --lock-text, --grad-checkpointing
    tokenizer = get_tokenizer(args.model, cache_dir=args.cache_dir, context_length=args.force_context_length)
    autocast = get_autocast(args.precision, device_type=device.type)
    head = zero_shot_head(model, tokenizer, data.classnames, templates, device, autocast).to(device)
    for name, param in model.named_parameters():
        if not name.startswith("visual."):
            param.requires_grad_(False)  # only the image tower (and the head) are fine-tuned
    return model, ImageClassifier(model.visual, head), copy.deepcopy(head), preprocess_train, preprocess_val


def _read_templates(path: str | None) -> list:
    """``--templates`` with a file problem turned into a one-line configuration error."""
    try:
        return read_templates(path)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    except OSError as e:
        raise ConfigError(f"--templates {path}: cannot read it ({e.strerror or e}).") from e


def _wise_ft(args, alphas, data: Folders, model, classifier: ImageClassifier, zeroshot_weights, zeroshot_head,
             preprocess_val, device: torch.device, master: bool) -> dict:
    """Accuracy of every ``(1 - a) * zero-shot + a * fine-tuned`` mix; the master writes every output."""
    finetuned_weights, finetuned_head = _cpu_copy(model), copy.deepcopy(classifier.head)
    zs_head, ft_head = _cpu_copy(zeroshot_head), _cpu_copy(finetuned_head)
    scale = float(model.logit_scale.detach().float().exp().mean())
    if master:
        save_state_dict(finetuned_weights, os.path.join(args.output, "finetuned.safetensors"))
        save_state_dict(head_state(zeroshot_head, finetuned_head), os.path.join(args.output, "head.safetensors"),
                        metadata=head_metadata(data.classnames, scale))
    loaders = {"val": data.val, **{f"ood:{k}": v for k, v in data.ood.items()}}
    loaders = {k: eval_loader(v, preprocess_val, batch_size=args.batch_size, workers=args.workers,
                              rank=args.rank, world_size=args.world_size) for k, v in loaders.items()}
    accs: dict[str, list[float]] = {k: [] for k in loaders}
    for text, alpha in zip(args.wise_ft_alphas, alphas):
        mixed = interpolate_state_dicts(zeroshot_weights, finetuned_weights, alpha)
        model.load_state_dict(mixed)
        classifier.head.load_state_dict(interpolate_state_dicts(zs_head, ft_head, alpha))
        for key, loader in loaders.items():
            accs[key].append(accuracy(classifier, loader, precision=args.precision, device=device))
        logging.info(f"WiSE-FT alpha {text}: " + ", ".join(f"{k.replace('ood:', 'OOD ')} {v[-1]:.4f}"
                                                           for k, v in accs.items()))
        if master:
            save_state_dict(mixed, os.path.join(args.output, alpha_filename(text)))
    results = results_dict(alphas, accs.pop("val"), {k[len("ood:"):]: v for k, v in accs.items()})
    if master:
        write_results(results, os.path.join(args.output, "results.json"))
        plot_wise_ft(results, os.path.join(args.output, "wise_ft.png"))
        logging.info(f"Wrote fine-tuned, head and {len(alphas)} WiSE-FT checkpoints, results.json and wise_ft.png "
                     f"to {args.output}")
    return results


def main(argv=None):
    """``run`` with handled errors logged as one line and turned into -1 (as the training app's ``main``)."""
    try:
        return run(argv)
    except (ConfigError, TrainingError) as e:
        logging.error(f"Error: {e}")
        return -1


def cli(argv=None) -> int:
    """Command-line wrapper: exit code 2 for configuration errors, 1 for a stopped run."""
    try:
        run(argv)
    except ConfigError as e:
        logging.error(f"Error: {e}")
        return 2
    except TrainingError as e:
        logging.error(f"Error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
