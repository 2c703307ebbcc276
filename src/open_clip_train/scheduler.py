"""Learning-rate schedules (cosine, constant, constant with cooldown), each with linear warmup.

Each factory returns ``adjust(step) -> lr`` which writes the LR into every param group (scaled by the
group's ``lr_scale`` with layer-wise or per-tower learning rates).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Schedule = Callable[[int], float]


def assign_learning_rate(optimizer: torch.optim.Optimizer, new_lr: float) -> None:
    """Set ``lr`` of every param group (times the group's ``lr_scale`` where it has one)."""
    for group in optimizer.param_groups:
        # Groups without lr_scale (every group by default, as in 3.3) get exactly new_lr.
        group["lr"] = new_lr * group["lr_scale"] if "lr_scale" in group else new_lr


def _warmup_lr(base_lr: float, warmup_length: int, step: int) -> float:
    return base_lr * (step + 1) / warmup_length


def cosine_lr(optimizer: torch.optim.Optimizer, base_lr: float, warmup_length: int, steps: int) -> Schedule:
    """Warmup then half-cosine decay from ``base_lr`` towards 0 at ``steps``."""

    def _lr_adjuster(step: int) -> float:
        if step < warmup_length:
            lr = _warmup_lr(base_lr, warmup_length, step)
        else:
            e = step - warmup_length
            es = steps - warmup_length
            lr = 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr
        assign_learning_rate(optimizer, lr)
        return lr

    return _lr_adjuster


def const_lr(optimizer: torch.optim.Optimizer, base_lr: float, warmup_length: int, steps: int) -> Schedule:
    """Warmup then constant ``base_lr``."""

    def _lr_adjuster(step: int) -> float:
        lr = _warmup_lr(base_lr, warmup_length, step) if step < warmup_length else base_lr
        assign_learning_rate(optimizer, lr)
        return lr

    return _lr_adjuster


def const_lr_cooldown(
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        warmup_length: int,
        steps: int,
        cooldown_steps: int,
        cooldown_power: float = 1.0,
        cooldown_end_lr: float = 0.0,
) -> Schedule:
    """Warmup, constant, then a polynomial cooldown to ``cooldown_end_lr`` over the last steps."""

    def _lr_adjuster(step: int) -> float:
        start_cooldown_step = steps - cooldown_steps
        if step < warmup_length:
            lr = _warmup_lr(base_lr, warmup_length, step)
        elif step < start_cooldown_step:
            lr = base_lr
        else:
            e = step - start_cooldown_step
            es = steps - start_cooldown_step
            decay = (1 - (e / es)) ** cooldown_power
            lr = decay * (base_lr - cooldown_end_lr) + cooldown_end_lr
        assign_learning_rate(optimizer, lr)
        return lr

    return _lr_adjuster


def create_scheduler(
        name: str,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        warmup: int,
        total_steps: int,
        cooldown_steps: int | None = None,
        cooldown_power: float = 1.0,
        cooldown_end_lr: float = 0.0,
) -> Schedule:
    """Build the schedule called ``name``; raise ``ValueError`` naming the valid choices otherwise."""
    if name == "cosine":
        return cosine_lr(optimizer, base_lr, warmup, total_steps)
    if name == "const":
        return const_lr(optimizer, base_lr, warmup, total_steps)
    if name == "const-cooldown":
        if cooldown_steps is None:
            raise ValueError("--lr-scheduler const-cooldown needs --epochs-cooldown (number of cooldown epochs).")
        return const_lr_cooldown(
            optimizer, base_lr, warmup, total_steps, cooldown_steps, cooldown_power, cooldown_end_lr)
    raise ValueError(f"Unknown scheduler, {name}. Available options are: cosine, const, const-cooldown.")
