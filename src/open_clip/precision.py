"""Every precision rule in one place: what each ``precision`` string means for weights, inputs and
autocast.

Owns ``get_cast_dtype`` (the dtype native towers are built for), ``get_input_dtype`` (the dtype
images are cast to), ``convert_weights_to_lp`` (3.3's selective low-precision cast),
``set_model_device_and_precision`` (what ``create_model`` does with ``precision=``) and
``get_autocast`` (the autocast context of the ``amp`` precisions, used by training and
evaluation).

The precisions: ``fp32``; ``fp16`` / ``bf16`` (matmul weights in low precision, norms, embeddings
and logit scale in float32; towers built with float32 layer norms); ``pure_fp16`` / ``pure_bf16``
(everything in low precision); ``amp`` / ``amp_bf16`` (float32 weights, autocast to float16 /
bfloat16).
"""

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Optional

import torch
from torch import nn

__all__ = [
    "get_cast_dtype",
    "get_input_dtype",
    "convert_weights_to_lp",
    "convert_weights_to_fp16",
    "set_model_device_and_precision",
    "get_autocast",
    "low_precision_dtype",
]


def low_precision_dtype(precision: str) -> Optional[torch.dtype]:
    """The 16-bit dtype a precision computes in (float16 / bfloat16), or None for float32."""
    if precision in ("fp16", "pure_fp16", "amp"):
        return torch.float16
    if precision in ("bf16", "pure_bf16", "amp_bf16", "amp_bfloat16"):
        return torch.bfloat16
    return None


def get_cast_dtype(precision: str) -> Optional[torch.dtype]:
    """Dtype native towers are built for: 'bf16' -> bfloat16, 'fp16' -> float16, else None."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    return None


def get_input_dtype(precision: str) -> Optional[torch.dtype]:
    """Dtype images should be cast to: bfloat16 for 'bf16'/'pure_bf16', float16 for 'fp16'/'pure_fp16'."""
    if precision in ("bf16", "pure_bf16"):
        return torch.bfloat16
    if precision in ("fp16", "pure_fp16"):
        return torch.float16
    return None


_ATTN_WEIGHT_ATTRS = (
    "in_proj_weight",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "in_proj_bias",
    "bias_k",
    "bias_v",
)


def _cast_tensor_attr(module: nn.Module, name: str, dtype: torch.dtype) -> None:
    tensor = getattr(module, name, None)
    # A Linear text_projection (proj_bias) is cast by the Linear rule; 3.3 crashed on it here.
    if isinstance(tensor, torch.Tensor):
        tensor.data = tensor.data.to(dtype)


def convert_weights_to_lp(model: nn.Module, dtype: torch.dtype = torch.float16) -> None:
    """Cast the matmul weights of ``model`` to ``dtype`` in place ('fp16'/'bf16' precision).

    Cast: Conv1d/Conv2d/Linear weight and bias, attention in/q/k/v projections and biases, the text
    projection of CLIP / TextTransformer and the ViT ``proj``. Everything else (embeddings, norms,
    logit scale/bias, attention-pool queries, buffers) stays float32, as in 3.3.
    """
    # imported here: the towers import this module for the names 3.3 exposed next to them
    from .models.attention import Attention
    from .models.clip import CLIP
    from .models.text_transformer import TextTransformer
    from .models.vision_transformer import VisionTransformer

    def _convert(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(dtype)
        if isinstance(module, (nn.MultiheadAttention, Attention)):
            for attr in _ATTN_WEIGHT_ATTRS:
                _cast_tensor_attr(module, attr, dtype)
        if isinstance(module, (CLIP, TextTransformer)):
            _cast_tensor_attr(module, "text_projection", dtype)
        if isinstance(module, VisionTransformer):
            _cast_tensor_attr(module, "proj", dtype)

    model.apply(_convert)


convert_weights_to_fp16 = convert_weights_to_lp  # 3.3's older name


def set_model_device_and_precision(
    model: nn.Module, device: torch.device, precision: str, is_timm_model: bool = False
) -> None:
    """Move and cast ``model`` for ``precision``: 'fp16'/'bf16' mixed, 'pure_*' all low precision."""
    if precision in ("fp16", "bf16"):
        dtype = low_precision_dtype(precision)
        if is_timm_model:
            # timm towers do not know convert_weights_to_lp: cast everything, then restore fp32 norms.
            from .models.layers import LayerNormFp32

            model.to(device=device, dtype=dtype)
            for module in model.modules():
                if isinstance(module, LayerNormFp32):
                    module.weight.data = module.weight.data.to(torch.float32)
                    module.bias.data = module.bias.data.to(torch.float32)
        else:
            model.to(device=device)
            convert_weights_to_lp(model, dtype=dtype)
    elif precision in ("pure_fp16", "pure_bf16"):
        model.to(device=device, dtype=low_precision_dtype(precision))
    else:
        model.to(device=device)


def get_autocast(precision: str, device_type: str = "cuda") -> Callable[[], contextlib.AbstractContextManager]:
    """Return a zero-argument factory of the autocast context for ``precision``.

    ``amp`` autocasts to float16, ``amp_bf16``/``amp_bfloat16`` to bfloat16; every other precision
    gets a no-op context (weights are already in their dtype).
    """
    if precision in ("amp", "amp_bf16", "amp_bfloat16"):
        return partial(torch.amp.autocast, device_type=device_type, dtype=low_precision_dtype(precision))
    return contextlib.suppress
