"""Autocast context factory for the ``--precision`` choices."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

import torch


def get_autocast(precision: str, device_type: str = "cuda") -> Callable[[], contextlib.AbstractContextManager]:
    """Return a zero-argument factory of the autocast context for ``precision``.

    ``amp`` autocasts to float16, ``amp_bf16``/``amp_bfloat16`` to bfloat16; every other precision
    gets a no-op context (weights are already in their dtype).
    """
    if precision == "amp":
        return partial(torch.amp.autocast, device_type=device_type, dtype=torch.float16)
    if precision in ("amp_bf16", "amp_bfloat16"):
        return partial(torch.amp.autocast, device_type=device_type, dtype=torch.bfloat16)
    return contextlib.suppress


def get_input_dtype(precision: str) -> torch.dtype | None:
    """Dtype images are cast to before the forward pass (None = leave as is); the library's mapping."""
    from open_clip.model import get_input_dtype as _get_input_dtype

    return _get_input_dtype(precision)
