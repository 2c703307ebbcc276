"""The training step loop: one epoch of forward, loss, backward and optimizer steps.

Handles autocast, the fp16 GradScaler, gradient accumulation with feature caching (3.3's
``--accum-freq``), gradient clipping, the logit-scale clamp, distillation, skipping steps whose
loss is not finite, per-step logging, and mid-epoch resume (skipping already consumed batches).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from open_clip.model import CLIP, CustomTextCLIP  # noqa: F401 (3.3 exposed these here)

from .distributed import is_master
from .errors import TrainingError
from .evaluate import evaluate, get_clip_metrics, maybe_compute_generative_loss  # noqa: F401 (3.3 names)
from .precision import get_autocast, get_input_dtype
from .zero_shot import zero_shot_eval  # noqa: F401 (3.3 name)

try:
    import wandb
except ImportError:
    wandb = None


class AverageMeter:
    """Running value/average of a scalar."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def postprocess_clip_output(model_out):
    return {"image_features": model_out[0], "text_features": model_out[1], "logit_scale": model_out[2]}


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP (or similar) wrapper."""
    return model.module if hasattr(model, "module") else model


def backward(total_loss: torch.Tensor, scaler) -> None:
    if scaler is not None:
        scaler.scale(total_loss).backward()
    else:
        total_loss.backward()


@dataclass
class TrainState:
    """Progress carried across epochs and into checkpoints."""

    global_step: int = 0  # optimizer steps completed (skipped non-finite steps count too)
    nonfinite_in_a_row: int = 0
    start_batch: int = 0  # micro-batches of the current epoch already consumed (mid-epoch resume)
    resume_rng: dict | None = None  # RNG to restore after skipping ``start_batch`` batches
    epoch_start_rng: dict | None = None  # RNG right before the epoch's data iterator was created
    data_state: dict | None = None  # loader state from a step checkpoint


# Called after each optimizer step with (state, epoch, micro-batches consumed in this epoch).
StepHook = Callable[[TrainState, int, int], None]


def epoch_batches(data_info, state: TrainState) -> Iterator[tuple[int, Any]]:
    """Yield ``(batch_index, batch)`` for the epoch, continuing after ``state.start_batch``.

    If the loader can restore its own position (``load_state_dict``) that is used; otherwise the
    RNG is rewound to the epoch start, the iterator is rebuilt and the consumed batches are
    skipped, which reproduces the original order for seeded samplers and workers.
    """
    from .checkpoint import get_rng_state, set_rng_state

    loader = data_info.dataloader
    start = state.start_batch
    if start and start >= getattr(loader, "num_batches", float("inf")):
        # Saved after the epoch's last step: nothing left. (A loader's own state would already
        # point at the next epoch, so it must not be restored here.)
        if state.resume_rng is not None:
            set_rng_state(state.resume_rng)
        state.start_batch, state.resume_rng, state.data_state = 0, None, None
        return
    holder = data_info if hasattr(data_info, "load_state_dict") else loader
    restorable = start and state.data_state is not None and hasattr(holder, "load_state_dict")
    if restorable:
        holder.load_state_dict(state.data_state)
    elif start and state.epoch_start_rng is not None:
        set_rng_state(state.epoch_start_rng)
    state.epoch_start_rng = state.epoch_start_rng if start else get_rng_state()
    iterator = iter(loader)
    index = 0
    if start and not restorable:
        for index, _ in enumerate(iterator, start=1):
            if index >= start:
                break
    if start and state.resume_rng is not None:
        set_rng_state(state.resume_rng)
    state.start_batch, state.resume_rng, state.data_state = 0, None, None
    yield from enumerate(iterator, start=start)


def _all_finite(total_loss: torch.Tensor, distributed: bool) -> bool:
    """Whether the loss is finite on every rank (all ranks must agree to skip together)."""
    flag = torch.isfinite(total_loss.detach()).all().to(torch.float32).reshape(1)
    if distributed and dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _model_forward(model, dist_model, images, texts, distill: bool) -> dict:
    model_out = model(images, texts)
    if distill:
        with torch.no_grad():
            teacher_out = dist_model(images, texts)
        # DistillClipLoss takes no logit_bias: keep only the contrastive inputs (3.3 bug 12).
        model_out = {k: v for k, v in model_out.items() if k != "logit_bias"}
        model_out.update({f"dist_{k}": v for k, v in teacher_out.items() if k != "logit_bias"})
    return model_out


def _compute_losses(loss, model_out: dict) -> dict:
    losses = loss(**model_out, output_dict=True)
    total = sum(losses.values())
    losses["loss"] = total
    return losses


def _accum_step(model, loss, accum, autocast, scaler, args) -> tuple[dict | None, bool]:
    """Backward over cached micro-batches, each re-forwarded with grad (3.3 feature caching)."""
    losses, finite = None, True
    for j in range(args.accum_freq):
        with autocast():
            model_out = model(accum["images"][j], accum["texts"][j])
            fixed = {"logit_scale": model_out.pop("logit_scale")}
            if "logit_bias" in model_out:
                fixed["logit_bias"] = model_out.pop("logit_bias")
            feats = accum["features"]
            inputs = {k: torch.cat(feats[k][:j] + [model_out[k]] + feats[k][j + 1:]) for k in feats}
            losses = _compute_losses(loss, {**inputs, **fixed})
            del inputs, fixed
        finite = _all_finite(losses["loss"], args.distributed)
        if not finite:
            break
        backward(losses["loss"], scaler)
    return losses, finite


def _optimizer_step(model, optimizer, scaler, args) -> None:
    clip = args.grad_clip_norm
    if scaler is not None:
        if getattr(args, "horovod", False):
            optimizer.synchronize()
            scaler.unscale_(optimizer)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip, norm_type=2.0)
            with optimizer.skip_synchronize():
                scaler.step(optimizer)
        else:
            if clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip, norm_type=2.0)
            scaler.step(optimizer)
        scaler.update()
    else:
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip, norm_type=2.0)
        optimizer.step()


def _handle_nonfinite(state: TrainState, step: int, losses: dict | None, optimizer, args) -> None:
    optimizer.zero_grad(set_to_none=True)
    state.nonfinite_in_a_row += 1
    value = None if losses is None else float(losses["loss"].detach().float().item())
    logging.warning(f"Non-finite loss ({value}) at global step {step}; skipping this step "
                    f"({state.nonfinite_in_a_row}/{args.max_nonfinite_steps} in a row).")
    if args.max_nonfinite_steps and state.nonfinite_in_a_row >= args.max_nonfinite_steps:
        raise TrainingError(
            f"Loss was not finite for {state.nonfinite_in_a_row} steps in a row, last at global step {step} "
            f"(--max-nonfinite-steps {args.max_nonfinite_steps}). Stopped; saved checkpoints are intact. "
            "Try a lower --lr, --grad-clip-norm, or --precision amp_bf16/fp32.")


def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None,
                    state: TrainState | None = None, step_hook: StepHook | None = None) -> TrainState:
    """Train for one epoch (3.3 signature plus resumable ``state`` and a per-step ``step_hook``)."""
    state = state if state is not None else TrainState()
    device = torch.device(args.device)
    autocast = get_autocast(args.precision, device_type=device.type)
    input_dtype = get_input_dtype(args.precision)
    distill = bool(getattr(args, "distill", False))

    model.train()
    if dist_model is not None:
        dist_model.eval()
    data["train"].set_epoch(epoch)
    dataloader = data["train"].dataloader
    num_batches_per_epoch = dataloader.num_batches // args.accum_freq
    logger = _StepLogger(args, dataloader, num_batches_per_epoch, epoch, tb_writer)
    accum = {"images": [], "texts": [], "features": {}}

    end = time.time()
    for i, batch in epoch_batches(data["train"], state):
        i_accum = i // args.accum_freq
        step = num_batches_per_epoch * epoch + i_accum
        if i_accum >= num_batches_per_epoch:
            break  # trailing micro-batches beyond a multiple of accum_freq are dropped (3.3)
        if not args.skip_scheduler:
            scheduler(step)

        images, texts = batch
        images = images.to(device=device, dtype=input_dtype, non_blocking=True)
        texts = texts.to(device=device, non_blocking=True)
        logger.data_time.update(time.time() - end)
        optimizer.zero_grad()

        if args.accum_freq == 1:
            with autocast():
                model_out = _model_forward(model, dist_model, images, texts, distill)
                losses = _compute_losses(loss, model_out)
            finite = _all_finite(losses["loss"], args.distributed)
            if finite:
                backward(losses["loss"], scaler)
        else:
            with torch.no_grad(), autocast():
                model_out = model(images, texts)
                for key in ("logit_scale", "logit_bias"):
                    model_out.pop(key, None)
                for key, val in model_out.items():
                    accum["features"].setdefault(key, []).append(val)
            accum["images"].append(images)
            accum["texts"].append(texts)
            if (i + 1) % args.accum_freq > 0:
                continue
            optimizer.zero_grad()
            losses, finite = _accum_step(model, loss, accum, autocast, scaler, args)
            accum = {"images": [], "texts": [], "features": {}}

        if finite:
            _optimizer_step(model, optimizer, scaler, args)
            state.nonfinite_in_a_row = 0
        else:
            _handle_nonfinite(state, step, losses, optimizer, args)

        with torch.no_grad():
            unwrap_model(model).logit_scale.clamp_(0, math.log(100))
        state.global_step = step + 1

        logger.batch_time.update(time.time() - end)
        end = time.time()
        if is_master(args) and finite:
            logger.maybe_log(i_accum, step, len(images), losses, model, optimizer)
        if step_hook is not None:
            step_hook(state, epoch, (i_accum + 1) * args.accum_freq)
    return state


class _StepLogger:
    """Per-step console line and tensorboard/wandb scalars, as in 3.3."""

    def __init__(self, args, dataloader, num_batches_per_epoch: int, epoch: int, tb_writer):
        self.args, self.dataloader, self.epoch, self.tb_writer = args, dataloader, epoch, tb_writer
        self.num_batches_per_epoch = num_batches_per_epoch
        self.sample_digits = math.ceil(math.log(dataloader.num_samples + 1, 10))
        self.batch_time, self.data_time = AverageMeter(), AverageMeter()
        self.losses_m: dict[str, AverageMeter] = {}

    def maybe_log(self, i_accum: int, step: int, batch_size: int, losses: dict, model, optimizer) -> None:
        args = self.args
        batch_count = i_accum + 1
        if not (i_accum % args.log_every_n_steps == 0 or batch_count == self.num_batches_per_epoch):
            return
        num_samples = batch_count * batch_size * args.accum_freq * args.world_size
        samples_per_epoch = self.dataloader.num_samples
        percent_complete = 100.0 * batch_count / self.num_batches_per_epoch
        for key, val in losses.items():
            self.losses_m.setdefault(key, AverageMeter()).update(val.item(), batch_size)
        logit_scale_scalar = unwrap_model(model).logit_scale.exp().item()
        loss_log = " ".join(
            f"{name.capitalize()}: {m.val:#.5g} ({m.avg:#.5g})" for name, m in self.losses_m.items())
        samples_per_second = args.accum_freq * args.batch_size * args.world_size / max(self.batch_time.val, 1e-12)
        samples_per_second_per_gpu = args.accum_freq * args.batch_size / max(self.batch_time.val, 1e-12)
        lr = optimizer.param_groups[0]["lr"]
        logging.info(
            f"Train Epoch: {self.epoch} [{num_samples:>{self.sample_digits}}/{samples_per_epoch} "
            f"({percent_complete:.0f}%)] "
            f"Data (t): {self.data_time.avg:.3f} "
            f"Batch (t): {self.batch_time.avg:.3f}, {samples_per_second:#g}/s, {samples_per_second_per_gpu:#g}/s/gpu "
            f"LR: {lr:5f} "
            f"Logit Scale: {logit_scale_scalar:.3f} " + loss_log
        )
        log_data = {
            "data_time": self.data_time.val,
            "batch_time": self.batch_time.val,
            "samples_per_second": samples_per_second,
            "samples_per_second_per_gpu": samples_per_second_per_gpu,
            "scale": logit_scale_scalar,
            "lr": lr,
        }
        log_data.update({name: m.val for name, m in self.losses_m.items()})
        log_data = {"train/" + name: val for name, val in log_data.items()}
        if self.tb_writer is not None:
            for name, val in log_data.items():
                self.tb_writer.add_scalar(name, val, step)
        if getattr(args, "wandb", False) and wandb is not None:
            log_data["step"] = step
            wandb.log(log_data, step=step)
        self.batch_time.reset()
        self.data_time.reset()
