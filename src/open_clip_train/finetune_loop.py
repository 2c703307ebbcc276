"""The fine-tuning step loop (cross-entropy on class labels) and classification accuracy.

Precision follows the training app: ``amp`` autocasts to float16 with a gradient scaler, ``amp_bf16``
to bfloat16, the low-precision modes cast the inputs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .errors import TrainingError
from .precision import get_autocast, get_input_dtype


def train_classifier(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    schedule: Callable[[int], float],
    *,
    epochs: int,
    precision: str,
    device: torch.device,
    scaler=None,
    grad_clip_norm: float | None = None,
    log_every_n_steps: int = 10,
    log: bool = True,
) -> list[float]:
    """Train for ``epochs`` epochs; returns the loss of every step. ``schedule(step)`` sets the LR."""
    autocast = get_autocast(precision, device_type=device.type)
    input_dtype = get_input_dtype(precision)
    steps_per_epoch = len(loader)
    losses: list[float] = []
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        model.train()
        start = time.perf_counter()
        for i, (images, labels) in enumerate(loader):
            step = epoch * steps_per_epoch + i
            lr = schedule(step)
            images = images.to(device=device, dtype=input_dtype, non_blocking=True)
            labels = labels.to(device=device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(images), labels)
            if not math.isfinite(loss.item()):
                raise TrainingError(f"the loss is {loss.item()} at step {step} (epoch {epoch}); lower --lr or use "
                                    "--precision amp_bf16/fp32.")
            _backward_and_step(loss, model, optimizer, scaler, grad_clip_norm)
            losses.append(loss.item())
            done = i + 1
            if log and (done % log_every_n_steps == 0 or done == steps_per_epoch):
                rate = done * images.shape[0] / max(time.perf_counter() - start, 1e-9)
                logging.info(f"Fine-tune epoch {epoch} [{done}/{steps_per_epoch}] loss {loss.item():.4f} "
                             f"lr {lr:.3g} {rate:.1f} img/s/process")
    return losses


def _backward_and_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, scaler,
                       grad_clip_norm: float | None) -> None:
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm, norm_type=2.0)
        scaler.step(optimizer)
        scaler.update()
        return
    loss.backward()
    if grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm, norm_type=2.0)
    optimizer.step()


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, *, precision: str, device: torch.device) -> float:
    """Top-1 accuracy over every process's share of the data (counts are summed across processes)."""
    autocast = get_autocast(precision, device_type=device.type)
    input_dtype = get_input_dtype(precision)
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, total
    for images, labels in loader:
        images = images.to(device=device, dtype=input_dtype, non_blocking=True)
        labels = labels.to(device=device, non_blocking=True)
        with autocast():
            logits = model(images)
        counts[0] += (logits.argmax(dim=-1) == labels).sum()
        counts[1] += labels.numel()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    return float(counts[0] / counts[1]) if counts[1] > 0 else float("nan")
