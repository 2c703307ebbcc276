"""Reading our native towers for conversion: which parts a model has and the settings
transformers needs (activation, norm eps, MLP width), with refusals that name the feature."""

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..models.attention import ResidualAttentionBlock
from ..models.layers import QuickGELU
from ..models.text_transformer import TextTransformer
from .common import ExportError

__all__ = ["NativeText", "hf_activation", "native_text", "block_settings", "refuse"]


def refuse(target: str, problems: list[str]) -> None:
    """Raise one ExportError listing every feature ``target`` cannot represent."""
    if problems:
        raise ExportError(f"{target} cannot represent this model: " + "; ".join(problems) + ".")


def hf_activation(act: nn.Module, where: str) -> str:
    """transformers' ``hidden_act`` name of an activation module."""
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_pytorch_tanh"
    raise ExportError(f"{where}: activation {type(act).__name__} has no transformers equivalent")


def block_settings(blocks: nn.ModuleList, where: str) -> tuple[list[str], dict[str, Any]]:
    """(problems, settings) of our transformer blocks: heads, MLP width, activation, norm eps."""
    problems = []
    first = blocks[0]
    if not all(type(b) is ResidualAttentionBlock for b in blocks):
        problems.append(f"{where} custom attention blocks (block_type='custom', qk_norm, scaled_cosine_attn, "
                        f"scale_heads, scale_attn_inner, scale_attn or scale_fc)")
        return problems, {}
    if any(not isinstance(b.ls_1, nn.Identity) for b in blocks):
        problems.append(f"{where} LayerScale (ls_init_value)")
    if any(hasattr(b, "ln_1_kv") for b in blocks):
        problems.append(f"{where} cross-attention blocks")
    settings = {
        "num_attention_heads": first.attn.num_heads,
        "intermediate_size": first.mlp.c_fc.out_features,
        "hidden_act": hf_activation(first.mlp.gelu, where),
        "layer_norm_eps": float(first.ln_1.eps),
        "num_hidden_layers": len(blocks),
    }
    return problems, settings


@dataclass
class NativeText:
    """Our native text tower, wherever its parts live (CLIP keeps them at top level)."""

    module: nn.Module
    prefix: str  # state-dict prefix: '' for CLIP, 'text.' for CustomTextCLIP
    pool_type: str
    eos_id: int
    causal: bool
    cls_emb: Optional[torch.Tensor]


def native_text(model: nn.Module) -> Optional[NativeText]:
    """The native text tower of a CLIP / CustomTextCLIP, or None (HF text tower, CoCa...)."""
    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        return NativeText(text, "text.", text.pool_type, text.eos_id, text.attn_mask is not None, text.cls_emb)
    if text is None and hasattr(model, "token_embedding"):
        return NativeText(model, "", model.text_pool_type, model.text_eos_id, model.attn_mask is not None, None)
    return None
