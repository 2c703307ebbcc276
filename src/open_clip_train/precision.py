"""Autocast context factory for the ``--precision`` choices (and the library's input-dtype mapping)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

import torch

# The dtype images are cast to before the forward pass: the library's own mapping (the same object
# as `open_clip.get_input_dtype`, which 3.3's training modules imported).
from open_clip.model import get_input_dtype  # noqa: F401 (re-export)


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
