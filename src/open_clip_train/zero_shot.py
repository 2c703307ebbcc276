"""Zero-shot ImageNet(-v2) classification accuracy during training.

``zero_shot_eval`` looks up ``get_tokenizer``, ``get_autocast``, ``build_zero_shot_classifier``
and ``run`` as module globals at call time, so tests can replace them.
"""

from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from open_clip.tokenizer_config import get_tokenizer
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

from .precision import get_autocast, get_input_dtype


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """Number of rows whose target is among the top-k logits, for each k (as Python floats).

    3.3 converted one-element numpy arrays with ``float()``, which NumPy 2.x rejects; counts here
    are scalar reductions.
    """
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum().item()) for k in topk]


def run(model, classifier, dataloader, args) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (fractions) of ``classifier`` over ``dataloader``."""
    device = torch.device(args.device)
    autocast = get_autocast(args.precision, device_type=device.type)
    input_dtype = get_input_dtype(args.precision)
    with torch.inference_mode():
        top1, top5, n = 0.0, 0.0, 0.0
        for images, target in tqdm(dataloader, unit_scale=args.batch_size, disable=not _tqdm_enabled()):
            images = images.to(device=device, dtype=input_dtype)
            target = target.to(device)
            with autocast():
                output = model(image=images)
                image_features = output["image_features"] if isinstance(output, dict) else output[0]
                logits = 100.0 * image_features @ classifier
            acc1, acc5 = accuracy(logits, target, topk=(1, 5))
            top1 += acc1
            top5 += acc5
            n += images.size(0)
    return top1 / n, top5 / n


def _tqdm_enabled() -> bool:
    return logging.getLogger().isEnabledFor(logging.INFO)


def zero_shot_eval(model, data, epoch, args, tokenizer=None) -> dict:
    """ImageNet zero-shot metrics for the datasets present in ``data`` (empty when not due)."""
    if "imagenet-val" not in data and "imagenet-v2" not in data:
        return {}
    if args.zeroshot_frequency == 0:
        return {}
    if (epoch % args.zeroshot_frequency) != 0 and epoch != args.epochs:
        return {}
    if args.distributed and not args.horovod and not getattr(args, "fsdp", False):
        model = model.module

    logging.info("Starting zero-shot imagenet.")
    if tokenizer is None:
        tokenizer = get_tokenizer(args.model)
    logging.info("Building zero-shot classifier")
    device = torch.device(args.device)
    autocast = get_autocast(args.precision, device_type=device.type)
    with autocast():
        classifier = build_zero_shot_classifier(
            model,
            tokenizer=tokenizer,
            classnames=IMAGENET_CLASSNAMES,
            templates=OPENAI_IMAGENET_TEMPLATES,
            num_classes_per_batch=10,
            device=device,
            use_tqdm=True,
        )

    logging.info("Using classifier")
    results = {}
    if "imagenet-val" in data:
        top1, top5 = run(model, classifier, data["imagenet-val"].dataloader, args)
        results["imagenet-zeroshot-val-top1"] = top1
        results["imagenet-zeroshot-val-top5"] = top5
    if "imagenet-v2" in data:
        top1, top5 = run(model, classifier, data["imagenet-v2"].dataloader, args)
        results["imagenetv2-zeroshot-val-top1"] = top1
        results["imagenetv2-zeroshot-val-top5"] = top5
    logging.info("Finished zero-shot imagenet.")
    return results
