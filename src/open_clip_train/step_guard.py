"""Skipping non-finite optimizer steps, decided on the device (no host sync per step).

A step is non-finite when its loss, the logit scale or bias the loss used, or a gradient is not
finite. The decision is a device tensor ``found_inf`` (1.0 = skip), as in ``torch.amp.GradScaler``:

- before the loss, a non-finite logit scale/bias is replaced by a finite stand-in (the losses
  reject non-finite scales) and remembered; the loss is then multiplied by NaN when the step must
  be skipped (:func:`poison_loss`), so its gradients are NaN on this rank and, through DDP's
  all-reduce, on every rank;
- after backward, ``found_inf`` is computed from the gradients (:meth:`NonFiniteGuard.check_grads`)
  and the optimizer step is skipped on the device: optimizers with a fused kernel take ``found_inf``
  and leave parameters and state untouched (:func:`guarded_step`). Other optimizers need one host
  read per step to decide. With a GradScaler the scaler skips the step itself (NaN gradients) and
  ``found_inf`` only feeds the counters;
- the counters (non-finite steps in a row, the worst run, the step that crossed
  ``--max-nonfinite-steps``) live on the device too and are read by :meth:`NonFiniteGuard.poll`,
  which the loop calls only when it logs (every ``--log-every-n-steps``) and at the end of an epoch.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch

from .errors import TrainingError

# Model outputs the losses use as scalars; a non-finite value in any of them makes the step non-finite.
LOGIT_PARAM_KEYS = ("logit_scale", "logit_bias", "dist_logit_scale", "dist_logit_bias")

# Device counter slots.
_IN_A_ROW, _WORST, _SKIPPED, _LAST_BAD, _TRIP = range(5)


def sanitize_logit_params(model_out: dict) -> tuple[dict, torch.Tensor | None]:
    """Replace non-finite logit scales/biases by 1.0; return the new outputs and a device flag (True = was bad).

    The flag is None when the outputs hold none of ``LOGIT_PARAM_KEYS``.
    """
    bad = None
    out = dict(model_out)
    for key in LOGIT_PARAM_KEYS:
        value = out.get(key)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        finite = torch.isfinite(value)
        flag = ~finite.all()
        bad = flag if bad is None else bad | flag
        # `where` passes gradients to the finite entries only: no NaN reaches the parameter's grad from here.
        out[key] = torch.where(finite, value, torch.ones_like(value))
    return out, bad


def nonfinite_flag(loss: torch.Tensor, params_bad: torch.Tensor | None) -> torch.Tensor:
    """Device bool: the loss or the logit parameters it used are not finite."""
    bad = ~torch.isfinite(loss.detach()).all()
    return bad if params_bad is None else bad | params_bad


def poison_loss(loss: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """``loss`` times NaN where ``bad``: every gradient of a step that must be skipped becomes NaN."""
    return loss * torch.where(bad, torch.full_like(loss, float("nan")), torch.ones_like(loss))


def supports_device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours a ``found_inf`` tensor (torch's fused Adam/AdamW/SGD/Adagrad)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def guarded_step(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """``optimizer.step()`` unless ``found_inf`` (a 0-dim float tensor) is nonzero."""
    if supports_device_skip(optimizer):
        # The fused kernels read these attributes (GradScaler's protocol) and skip on the device.
        optimizer.grad_scale = None
        optimizer.found_inf = found_inf.reshape(())
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif not found_inf.item():  # this optimizer can only skip when the host knows
        optimizer.step()


class NonFiniteGuard:
    """Device-side non-finite step detection and counters (see the module docstring).

    Args:
        max_in_a_row: stop after this many non-finite steps in a row (0 = never stop).
        device: where the flags and counters live.
    """

    def __init__(self, max_in_a_row: int, device: torch.device | str) -> None:
        self.max_in_a_row = max_in_a_row
        self.device = torch.device(device)
        self._counters = torch.tensor([0, 0, 0, -1, -1], dtype=torch.int64, device=self.device)
        self.in_a_row = 0  # host copy as of the last poll
        self.skipped_total = 0

    def check_grads(self, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """0-dim float tensor on the device: 1.0 if any gradient of ``optimizer``'s params is not finite."""
        found = torch.zeros(1, device=self.device)
        by_device: dict = defaultdict(lambda: defaultdict(list))
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and not p.grad.is_sparse:
                    # sharded (FSDP) gradients are checked apart from plain ones: torch reduces the
                    # flag of a sharded list over the shards' ranks, and refuses mixed lists
                    sharded = type(p.grad).__name__ == "DTensor"
                    by_device[p.grad.device][(p.grad.dtype, sharded)].append(p.grad)
        for device, per_dtype in by_device.items():
            found_here = torch.zeros(1, device=device)
            one = torch.ones(1, device=device)
            for grads in per_dtype.values():
                try:
                    # GradScaler's kernel: sets found_here if any value is inf/NaN; scaling by 1.0 is exact.
                    torch._amp_foreach_non_finite_check_and_unscale_(grads, found_here, one)
                except (RuntimeError, NotImplementedError):  # a device without that kernel
                    bad = torch.stack([~torch.isfinite(g).all() for g in grads]).any()
                    found_here = torch.maximum(found_here, bad.float().reshape(1))
            found = torch.maximum(found, found_here.to(self.device, non_blocking=True))
        return found.reshape(())

    def record(self, found_inf: torch.Tensor, step: int) -> None:
        """Update the device counters for optimizer step ``step`` (``found_inf`` nonzero = skipped)."""
        c = self._counters
        bad = found_inf.reshape(()).to(self.device) > 0
        in_a_row = torch.where(bad, c[_IN_A_ROW] + 1, torch.zeros_like(c[_IN_A_ROW]))
        worst = torch.maximum(c[_WORST], in_a_row)
        skipped = c[_SKIPPED] + bad.long()
        last_bad = torch.where(bad, torch.full_like(c[_LAST_BAD], step), c[_LAST_BAD])
        trip = c[_TRIP]
        if self.max_in_a_row > 0:
            crossed = (trip < 0) & (in_a_row >= self.max_in_a_row)
            trip = torch.where(crossed, torch.full_like(trip, step), trip)
        self._counters = torch.stack([in_a_row, worst, skipped, last_bad, trip])

    def poll(self, step: int | None = None) -> None:
        """Read the counters (one host sync); warn about skipped steps; raise once the limit was reached.

        Every rank must poll at the same steps: the counters are identical across ranks, so they all
        stop together.
        """
        in_a_row, worst, skipped, last_bad, trip = self._counters.tolist()
        self.in_a_row = in_a_row
        if skipped:
            self.skipped_total += skipped
            logging.warning(
                f"Skipped {skipped} non-finite step(s) (loss, logit scale/bias or gradients not finite) since the "
                f"last report, last at global step {last_bad}; longest run {worst} "
                f"(--max-nonfinite-steps {self.max_in_a_row}).")
            self._counters = torch.tensor([in_a_row, in_a_row, 0, last_bad, trip], dtype=torch.int64,
                                          device=self.device)
        if trip >= 0:
            raise TrainingError(
                f"Loss was not finite for {self.max_in_a_row} steps in a row, last at global step {trip} "
                f"(--max-nonfinite-steps {self.max_in_a_row}). Stopped; saved checkpoints are intact. "
                "Try a lower --lr, --grad-clip-norm, or --precision amp_bf16/fp32.")

    def state_dict(self) -> dict:
        """The consecutive-step count (reads the device once; call at checkpoint time)."""
        return {"nonfinite_in_a_row": int(self._counters[_IN_A_ROW].item())}

    def load_state_dict(self, state: dict) -> None:
        n = int(state.get("nonfinite_in_a_row", 0))
        self.in_a_row = n
        self._counters = torch.tensor([n, n, 0, -1, -1], dtype=torch.int64, device=self.device)
