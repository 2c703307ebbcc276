"""Validation: zero-shot accuracy, contrastive val loss and retrieval metrics; results.jsonl."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import zero_shot
from .distributed import is_master
from .precision import get_autocast, get_input_dtype

try:
    import wandb
except ImportError:
    wandb = None


def get_clip_metrics(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale) -> dict:
    """Mean/median rank and R@1/5/10 for image->text and text->image retrieval (pair i matches i)."""
    metrics = {}
    logits_per_image = (logit_scale * image_features @ text_features.t()).detach().cpu()
    logits_per_text = logits_per_image.t().detach().cpu()
    logits = {"image_to_text": logits_per_image, "text_to_image": logits_per_text}
    ground_truth = torch.arange(len(text_features)).view(-1, 1)
    for name, logit in logits.items():
        ranking = torch.argsort(logit, descending=True)
        preds = torch.where(ranking == ground_truth)[1]
        preds = preds.detach().cpu().numpy()
        metrics[f"{name}_mean_rank"] = preds.mean() + 1
        metrics[f"{name}_median_rank"] = np.floor(np.median(preds)) + 1
        for k in [1, 5, 10]:
            metrics[f"{name}_R@{k}"] = np.mean(preds < k)
    return metrics


def maybe_compute_generative_loss(model_out: dict):
    if "logits" in model_out and "labels" in model_out:
        token_logits = model_out["logits"]
        token_labels = model_out["labels"]
        return F.cross_entropy(token_logits.permute(0, 2, 1), token_labels)
    return None


def _val_due(data: dict, epoch: int, args) -> bool:
    return "val" in data and bool(args.val_frequency) and (
        (epoch % args.val_frequency) == 0 or epoch == args.epochs)


def _val_metrics(model, dataloader, epoch: int, args) -> dict:
    device = torch.device(args.device)
    autocast = get_autocast(args.precision, device_type=device.type)
    input_dtype = get_input_dtype(args.precision)
    num_samples, samples_per_val = 0, dataloader.num_samples
    cumulative_loss, cumulative_gen_loss = 0.0, 0.0
    gen_loss = None
    all_image_features, all_text_features = [], []
    logit_scale = None
    with torch.inference_mode():
        for i, (images, texts) in enumerate(tqdm(dataloader, disable=not logging.getLogger().isEnabledFor(20))):
            images = images.to(device=device, dtype=input_dtype, non_blocking=True)
            texts = texts.to(device=device, non_blocking=True)
            with autocast():
                model_out = model(images, texts)
                image_features = model_out["image_features"]
                text_features = model_out["text_features"]
                logit_scale = model_out["logit_scale"]
                all_image_features.append(image_features.cpu())
                all_text_features.append(text_features.cpu())
                logit_scale = logit_scale.mean()
                logits_per_image = logit_scale * image_features @ text_features.t()
                logits_per_text = logits_per_image.t()
                batch_size = images.shape[0]
                labels = torch.arange(batch_size, device=device).long()
                total_loss = (F.cross_entropy(logits_per_image, labels)
                              + F.cross_entropy(logits_per_text, labels)) / 2
                gen_loss = maybe_compute_generative_loss(model_out)
            cumulative_loss += total_loss * batch_size
            num_samples += batch_size
            # 3.3 summed the generative loss only on logged batches; sum it on every batch.
            if gen_loss is not None:
                cumulative_gen_loss += gen_loss * batch_size
            if is_master(args) and (i % 100) == 0:
                logging.info(f"Eval Epoch: {epoch} [{num_samples} / {samples_per_val}]\t"
                             f"Clip Loss: {cumulative_loss / num_samples:.6f}\t")
    if num_samples == 0:
        return {}
    metrics = get_clip_metrics(torch.cat(all_image_features), torch.cat(all_text_features), logit_scale.cpu())
    loss = cumulative_loss / num_samples
    metrics.update({"clip_val_loss": loss.item(), "epoch": epoch, "num_samples": num_samples})
    if gen_loss is not None:
        metrics["val_generative_loss"] = (cumulative_gen_loss / num_samples).item()
    return metrics


def evaluate(model, data, epoch, args, tb_writer=None, tokenizer=None) -> dict:
    """Zero-shot and val-retrieval metrics on the master; appended to ``results.jsonl``.

    A sharded model (``--fsdp``) needs every rank in each forward: all ranks evaluate, the master
    reports."""
    metrics = {}
    sharded = bool(getattr(args, "fsdp", False))
    if not is_master(args) and not sharded:
        return metrics
    model.eval()

    metrics.update(zero_shot.zero_shot_eval(model, data, epoch, args, tokenizer=tokenizer))

    if _val_due(data, epoch, args):
        eval_model = model.module if (args.distributed and not args.horovod and not sharded) else model
        metrics.update(_val_metrics(eval_model, data["val"].dataloader, epoch, args))

    if not metrics or not is_master(args):
        return metrics
    logging.info(f"Eval Epoch: {epoch} " + "\t".join([f"{k}: {round(v, 4):.4f}" for k, v in metrics.items()]))
    log_data = {"val/" + name: val for name, val in metrics.items()}
    if getattr(args, "save_logs", False):
        if tb_writer is not None:
            for name, val in log_data.items():
                tb_writer.add_scalar(name, val, epoch)
        with open(os.path.join(args.checkpoint_path, "results.jsonl"), "a+") as f:
            f.write(json.dumps(_jsonable(metrics)))
            f.write("\n")
    if getattr(args, "wandb", False) and wandb is not None:
        if "train" in data:
            dataloader = data["train"].dataloader
            num_batches_per_epoch = dataloader.num_batches // args.accum_freq
            step = num_batches_per_epoch * epoch
        else:
            step = None
        log_data["epoch"] = epoch
        wandb.log(log_data, step=step)
    return metrics


def _jsonable(metrics: dict) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
