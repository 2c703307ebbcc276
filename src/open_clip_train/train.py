"""The training step loop: one epoch of forward, loss, backward and optimizer steps.

Handles autocast, the fp16 GradScaler, gradient accumulation with feature caching (3.3's
``--accum-freq``), gradient clipping, the logit-scale clamp, distillation, skipping non-finite
steps on the device (``step_guard``), per-step logging (``step_log``), timing the waits for data
(and letting a stall watchdog see them), and mid-epoch resume (skipping already consumed batches).
A step reads nothing back from the device except at log steps.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from open_clip.model import CLIP, CustomTextCLIP  # noqa: F401 (3.3 exposed these here)

from .distributed import all_reduce_max, is_master
from .evaluate import evaluate, get_clip_metrics, maybe_compute_generative_loss  # noqa: F401 (3.3 names)
from .precision import get_autocast, get_input_dtype
from .step_guard import NonFiniteGuard, guarded_step, nonfinite_flag, poison_loss, sanitize_logit_params
from .step_log import AverageMeter, StepLogger  # noqa: F401 (AverageMeter: a 3.3 name of this module)
from .zero_shot import zero_shot_eval  # noqa: F401 (3.3 name)

try:
    import wandb
except ImportError:
    wandb = None


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
    start_batch: int = 0  # micro-batches of the current epoch already consumed (mid-epoch resume)
    resume_rng: dict | None = None  # RNG to restore after skipping ``start_batch`` batches
    epoch_start_rng: dict | None = None  # RNG right before the epoch's data iterator was created
    data_state: dict | None = None  # loader state from a step checkpoint
    guard: NonFiniteGuard | None = None  # device-side non-finite step counters (made by the loop)
    # Seconds the last epoch waited for data and spent in steps in all (reporting only, not saved).
    epoch_timing: tuple[float, float] = (0.0, 0.0)

    @property
    def nonfinite_in_a_row(self) -> int:
        """Non-finite steps in a row as of the last log step (the device count is read only then)."""
        return self.guard.in_a_row if self.guard is not None else 0


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
        # a position saved at another world size continues from where the loader mapped it
        start = getattr(loader, "start_batch", start)
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


@dataclass
class TextBatch:
    """A batch of token ids on the device, with what the host knew about it: each row's pooled
    position + 1 for the student and the teacher (None where a tower has no early stop)."""

    tokens: torch.Tensor
    lengths: list[int] | None = None
    teacher_lengths: list[int] | None = None


def _pooled_lengths(model, texts: torch.Tensor) -> list[int] | None:
    lengths = getattr(unwrap_model(model), "pooled_text_lengths", None) if model is not None else None
    return lengths(texts) if lengths is not None else None


def prepare_texts(texts: torch.Tensor, model, dist_model, device: torch.device, compiled: bool) -> TextBatch:
    """Move a CPU batch of token ids to the device, reading on the host what the text early stop
    needs so that the step never waits for the device. A compiled model gets no lengths (a graph
    cannot use them without recompiling per batch): its batch is cut instead to a multiple of 16
    tokens past the longest kept row, so only a few shapes are ever compiled."""
    lengths = _pooled_lengths(model, texts) if texts.device.type == "cpu" else None
    teacher = _pooled_lengths(dist_model, texts) if dist_model is not None and texts.device.type == "cpu" else None
    if compiled:
        if lengths is not None and (dist_model is None or teacher is not None):
            longest = max(lengths + (teacher or []))
            texts = texts[:, : min(texts.shape[1], -(-longest // 16) * 16)]
        lengths = teacher = None
    return TextBatch(texts.to(device=device, non_blocking=True), lengths, teacher)


def _call(model, images, text: TextBatch, teacher: bool = False):
    lengths = text.teacher_lengths if teacher else text.lengths
    if lengths is None:
        return model(images, text.tokens)
    return model(images, text.tokens, text_lengths=lengths)


def _model_forward(model, dist_model, images, texts: TextBatch, distill: bool) -> dict:
    model_out = _call(model, images, texts)
    if distill:
        with torch.no_grad():
            teacher_out = _call(dist_model, images, texts, teacher=True)
        # DistillClipLoss takes no logit_bias (3.3 passed it and crashed): keep only the contrastive inputs.
        model_out = {k: v for k, v in model_out.items() if k != "logit_bias"}
        model_out.update({f"dist_{k}": v for k, v in teacher_out.items() if k != "logit_bias"})
    return model_out


def _compute_losses(loss, model_out: dict) -> dict:
    losses = loss(**model_out, output_dict=True)
    total = sum(losses.values())
    losses["loss"] = total
    return losses


def _forward_backward(model, dist_model, loss, images, texts, autocast, scaler, distill: bool):
    """One forward/backward; returns ``(losses, non-finite flag on the device, logit scale used)``."""
    with autocast():
        model_out = _model_forward(model, dist_model, images, texts, distill)
        used_scale = model_out["logit_scale"]
        model_out, params_bad = sanitize_logit_params(model_out)
        losses = _compute_losses(loss, model_out)
    bad = nonfinite_flag(losses["loss"], params_bad)
    backward(poison_loss(losses["loss"], bad), scaler)
    return losses, bad, used_scale


def _accum_step(model, loss, accum, autocast, scaler, args):
    """Backward over cached micro-batches, each re-forwarded with grad (3.3 feature caching).

    Returns ``(losses of the last micro-batch, non-finite flag of any, logit scale used)``.
    """
    losses = bad_any = used_scale = None
    for j in range(args.accum_freq):
        with autocast():
            model_out = _call(model, accum["images"][j], accum["texts"][j])
            used_scale = model_out["logit_scale"]
            model_out, params_bad = sanitize_logit_params(model_out)
            fixed = {"logit_scale": model_out.pop("logit_scale")}
            if "logit_bias" in model_out:
                fixed["logit_bias"] = model_out.pop("logit_bias")
            feats = accum["features"]
            inputs = {k: torch.cat(feats[k][:j] + [model_out[k]] + feats[k][j + 1:]) for k in feats}
            losses = _compute_losses(loss, {**inputs, **fixed})
            del inputs, fixed
        bad = nonfinite_flag(losses["loss"], params_bad)
        bad_any = bad if bad_any is None else bad_any | bad
        backward(poison_loss(losses["loss"], bad), scaler)
    return losses, bad_any, used_scale


def _clip(model, args) -> None:
    if args.grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm, norm_type=2.0)


def _optimizer_step(model, optimizer, scaler, args, guard: NonFiniteGuard, bad: torch.Tensor) -> torch.Tensor:
    """Clip and step, skipping a non-finite step on the device; returns ``found_inf`` for the counters."""
    horovod = getattr(args, "horovod", False)
    if horovod:
        optimizer.synchronize()
    skip_sync = optimizer.skip_synchronize if horovod else contextlib.nullcontext
    if scaler is not None:
        # The scaler skips the step itself (a non-finite step has NaN gradients) and backs off its scale,
        # as 3.3 does; fp16 gradient overflows are its business and are not counted here. The flag is
        # made the same on every rank so that all ranks stop together.
        found_inf = all_reduce_max(bad.float(), args)
        if args.grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            _clip(model, args)
        with skip_sync():
            scaler.step(optimizer)
        scaler.update()
        return found_inf
    # After DDP's all-reduce every rank holds the same gradients, hence the same decision.
    found_inf = guard.check_grads(optimizer)
    _clip(model, args)
    with skip_sync():
        guarded_step(optimizer, found_inf)
    return found_inf


def _timed(batches: Iterator, logger: StepLogger, watchdog) -> Iterator:
    """Yield from ``batches``, timing each wait for the next batch (and showing it to the stall watchdog)."""
    batches = iter(batches)
    while True:
        start = time.time()
        with watchdog.waiting() if watchdog is not None else contextlib.nullcontext():
            item = next(batches, None)
        if item is None:
            return
        waited = time.time() - start
        logger.data_wait.update(waited)
        logger.epoch_wait += waited
        yield item


def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None,
                    state: TrainState | None = None, step_hook: StepHook | None = None,
                    watchdog: Any = None) -> TrainState:
    """Train for one epoch (3.3 signature plus resumable ``state``, a per-step ``step_hook`` and a
    stall ``watchdog`` with a ``waiting()`` context manager wrapped around every wait for data)."""
    state = state if state is not None else TrainState()
    device = torch.device(args.device)
    if state.guard is None:
        state.guard = NonFiniteGuard(args.max_nonfinite_steps, device)
    guard = state.guard
    autocast = get_autocast(args.precision, device_type=device.type)
    input_dtype = get_input_dtype(args.precision)
    distill = bool(getattr(args, "distill", False))

    model.train()
    if dist_model is not None:
        dist_model.eval()
    data["train"].set_epoch(epoch)
    dataloader = data["train"].dataloader
    num_batches_per_epoch = dataloader.num_batches // args.accum_freq
    logger = StepLogger(args, dataloader, num_batches_per_epoch, epoch, tb_writer)
    accum = {"images": [], "texts": [], "features": {}}

    end = time.time()
    for i, batch in _timed(epoch_batches(data["train"], state), logger, watchdog):
        i_accum = i // args.accum_freq
        step = num_batches_per_epoch * epoch + i_accum
        if i_accum >= num_batches_per_epoch:
            break  # trailing micro-batches beyond a multiple of accum_freq are dropped (3.3)
        if not args.skip_scheduler:
            scheduler(step)

        images, texts = batch
        images = images.to(device=device, dtype=input_dtype, non_blocking=True)
        texts = prepare_texts(texts, model, dist_model, device, compiled=bool(getattr(args, "torchcompile", False)))
        logger.data_time.update(time.time() - end)
        optimizer.zero_grad()

        # The run's first step is counted for the MFU field (from shapes: no host read, same numbers;
        # a compiled model is re-run uncompiled on the same inputs instead, see mfu.StepFlops).
        rerun = functools.partial(_forward_backward, dist_model=dist_model, loss=loss, images=images, texts=texts,
                                  autocast=autocast, scaler=None, distill=distill)
        with logger.flops.counting(len(images), model, rerun):
            if args.accum_freq == 1:
                losses, bad, used_scale = _forward_backward(model, dist_model, loss, images, texts, autocast, scaler,
                                                            distill)
            else:
                with torch.no_grad(), autocast():
                    model_out = _call(model, images, texts)
                    for key in ("logit_scale", "logit_bias"):
                        model_out.pop(key, None)
                    for key, val in model_out.items():
                        accum["features"].setdefault(key, []).append(val)
                accum["images"].append(images)
                accum["texts"].append(texts)
                if (i + 1) % args.accum_freq > 0:
                    continue
                optimizer.zero_grad()
                losses, bad, used_scale = _accum_step(model, loss, accum, autocast, scaler, args)
                accum = {"images": [], "texts": [], "features": {}}

        found_inf = _optimizer_step(model, optimizer, scaler, args, guard, bad)
        guard.record(found_inf, step)
        with torch.no_grad():
            unwrap_model(model).logit_scale.clamp_(0, math.log(100))
        state.global_step = step + 1

        logger.batch_time.update(time.time() - end)
        logger.epoch_time += time.time() - end
        end = time.time()
        if logger.due(i_accum):
            guard.poll()  # every rank, at the same steps: they stop together
            if is_master(args):
                logger.log(i_accum, step, len(images), losses, used_scale, optimizer)
        if step_hook is not None:
            step_hook(state, epoch, (i_accum + 1) * args.accum_freq)
    guard.poll()
    state.epoch_timing = (logger.epoch_wait, logger.epoch_time)
    return state
