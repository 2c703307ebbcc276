"""The per-step training log line and its tensorboard/wandb scalars.

The console line keeps 3.3's prefix, fields and order (tools parse ``Train Epoch: E [n/N (p%)] ...
Loss: x``); fields new here are appended at the end: ``data_wait: P%``, the share of the step time
(since the previous log line) the loop spent waiting for its next batch, then ``MFU: P%``, the model
FLOP utilisation of one device (FLOPs per sample counted once, on the run's first step, see ``mfu``;
``n/a`` where the device's peak is unknown).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from .distributed import is_master
from .mfu import StepFlops, model_flop_utilisation, peak_flops

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


class StepLogger:
    """Decides when a step is logged (3.3's cadence) and writes the line and scalars on the master."""

    def __init__(self, args: Any, dataloader: Any, num_batches_per_epoch: int, epoch: int, tb_writer: Any):
        self.args, self.dataloader, self.epoch, self.tb_writer = args, dataloader, epoch, tb_writer
        self.num_batches_per_epoch = num_batches_per_epoch
        self.sample_digits = math.ceil(math.log(dataloader.num_samples + 1, 10))
        self.batch_time, self.data_time = AverageMeter(), AverageMeter()
        self.data_wait = AverageMeter()  # seconds blocked in the loader, per step
        self.epoch_wait = self.epoch_time = 0.0  # whole-epoch totals for the epoch summary
        self.losses_m: dict[str, AverageMeter] = {}
        # The loop counts FLOPs inside ``flops.counting(...)`` on the model's first step. The peak is looked up
        # (on CPU: measured, once per process) here, before the loop's clock starts.
        self.flops = StepFlops(args.accum_freq)
        self.peak_flops = peak_flops(args.device, args.precision) if is_master(args) else None

    def due(self, i_accum: int) -> bool:
        """3.3's cadence: every ``--log-every-n-steps`` steps and at the last step of the epoch."""
        return i_accum % self.args.log_every_n_steps == 0 or i_accum + 1 == self.num_batches_per_epoch

    def data_wait_percent(self) -> float:
        """Share of the step time since the last log line spent waiting for data."""
        return 100.0 * self.data_wait.sum / self.batch_time.sum if self.batch_time.sum > 0 else 0.0

    def mfu_percent(self, samples_per_second_per_gpu: float) -> float | None:
        """Model FLOP utilisation of one device in percent (None until counted or for an unknown peak)."""
        mfu = model_flop_utilisation(self.flops.per_sample, samples_per_second_per_gpu, self.peak_flops)
        return None if mfu is None else 100.0 * mfu

    def log(self, i_accum: int, step: int, batch_size: int, losses: dict, logit_scale: torch.Tensor,
            optimizer: Any) -> None:
        """Write the line and scalars for this step (``logit_scale``: the value the loss used)."""
        args = self.args
        batch_count = i_accum + 1
        num_samples = batch_count * batch_size * args.accum_freq * args.world_size
        samples_per_epoch = self.dataloader.num_samples
        percent_complete = 100.0 * batch_count / self.num_batches_per_epoch
        for key, val in losses.items():
            self.losses_m.setdefault(key, AverageMeter()).update(val.item(), batch_size)
        logit_scale_scalar = logit_scale.detach().float().mean().item()
        loss_log = " ".join(
            f"{name.capitalize()}: {m.val:#.5g} ({m.avg:#.5g})" for name, m in self.losses_m.items())
        samples_per_second = args.accum_freq * args.batch_size * args.world_size / max(self.batch_time.val, 1e-12)
        samples_per_second_per_gpu = args.accum_freq * args.batch_size / max(self.batch_time.val, 1e-12)
        lr = optimizer.param_groups[0]["lr"]
        data_wait = self.data_wait_percent()
        mfu = self.mfu_percent(samples_per_second_per_gpu)
        logging.info(
            f"Train Epoch: {self.epoch} [{num_samples:>{self.sample_digits}}/{samples_per_epoch} "
            f"({percent_complete:.0f}%)] "
            f"Data (t): {self.data_time.avg:.3f} "
            f"Batch (t): {self.batch_time.avg:.3f}, {samples_per_second:#g}/s, {samples_per_second_per_gpu:#g}/s/gpu "
            f"LR: {lr:5f} "
            f"Logit Scale: {logit_scale_scalar:.3f} " + loss_log + f" data_wait: {data_wait:.1f}%"
            + (f" MFU: {mfu:.1f}%" if mfu is not None else " MFU: n/a")
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
        log_data["data_wait_percent"] = data_wait
        if self.flops.per_sample is not None:
            log_data["tflops_per_second_per_gpu"] = self.flops.per_sample * samples_per_second_per_gpu / 1e12
        if mfu is not None:
            log_data["mfu_percent"] = mfu
        log_data = {"train/" + name: val for name, val in log_data.items()}
        if self.tb_writer is not None:
            for name, val in log_data.items():
                self.tb_writer.add_scalar(name, val, step)
        if getattr(args, "wandb", False) and wandb is not None:
            log_data["step"] = step
            wandb.log(log_data, step=step)
        self.reset_window()

    def reset_window(self) -> None:
        """Start the next log window (3.3 resets the time meters after each line)."""
        self.batch_time.reset()
        self.data_time.reset()
        self.data_wait.reset()
