"""State-dict key mappings between our towers and transformers' CLIP / SigLIP encoders.

Only names and tensor layouts: our blocks keep ``nn.MultiheadAttention``'s packed
``in_proj_weight`` (q, k, v stacked) where transformers has separate ``q_proj`` / ``k_proj`` /
``v_proj``; timm's SigLIP blocks pack them as ``qkv``; our projections are ``x @ proj`` matrices
where transformers has ``nn.Linear`` weights (the transpose).
"""

import torch

__all__ = ["blocks_from_hf", "blocks_to_hf", "copy_keys", "timm_blocks_from_hf", "timm_blocks_to_hf"]

StateDict = dict[str, torch.Tensor]

# (ours, transformers) suffixes inside one block, besides the packed attention projection.
_BLOCK_PAIRS = (
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("attn.out_proj", "self_attn.out_proj"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
)
_TIMM_BLOCK_PAIRS = (
    ("norm1", "layer_norm1"),
    ("norm2", "layer_norm2"),
    ("attn.proj", "self_attn.out_proj"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2"),
)


def copy_keys(src: StateDict, dst: StateDict, pairs, src_prefix: str, dst_prefix: str) -> None:
    """dst[dst_prefix + b + '.weight'/'.bias'] = src[src_prefix + a + ...] for each (a, b) in pairs."""
    for a, b in pairs:
        for kind in ("weight", "bias"):
            key = f"{src_prefix}{a}.{kind}"
            if key in src:
                dst[f"{dst_prefix}{b}.{kind}"] = src[key]


def _split_qkv(dst: StateDict, prefix: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3), bias.chunk(3)):
        dst[f"{prefix}self_attn.{name}.weight"] = w
        dst[f"{prefix}self_attn.{name}.bias"] = b


def _join_qkv(src: StateDict, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    names = ("q_proj", "k_proj", "v_proj")
    weight = torch.cat([src[f"{prefix}self_attn.{n}.weight"] for n in names])
    bias = torch.cat([src[f"{prefix}self_attn.{n}.bias"] for n in names])
    return weight, bias


def blocks_to_hf(src: StateDict, src_prefix: str, dst_prefix: str, layers: int) -> StateDict:
    """Our ``{src_prefix}resblocks.{i}.*`` -> transformers ``{dst_prefix}layers.{i}.*``."""
    out: StateDict = {}
    for i in range(layers):
        a, b = f"{src_prefix}resblocks.{i}.", f"{dst_prefix}layers.{i}."
        _split_qkv(out, b, src[a + "attn.in_proj_weight"], src[a + "attn.in_proj_bias"])
        copy_keys(src, out, _BLOCK_PAIRS, a, b)
    return out


def blocks_from_hf(src: StateDict, src_prefix: str, dst_prefix: str, layers: int) -> StateDict:
    """transformers ``{src_prefix}layers.{i}.*`` -> our ``{dst_prefix}resblocks.{i}.*``."""
    out: StateDict = {}
    for i in range(layers):
        a, b = f"{src_prefix}layers.{i}.", f"{dst_prefix}resblocks.{i}."
        out[b + "attn.in_proj_weight"], out[b + "attn.in_proj_bias"] = _join_qkv(src, a)
        copy_keys(src, out, [(h, o) for o, h in _BLOCK_PAIRS], a, b)
    return out


def timm_blocks_to_hf(src: StateDict, src_prefix: str, dst_prefix: str, layers: int) -> StateDict:
    """timm ViT ``{src_prefix}blocks.{i}.*`` -> transformers ``{dst_prefix}layers.{i}.*``."""
    out: StateDict = {}
    for i in range(layers):
        a, b = f"{src_prefix}blocks.{i}.", f"{dst_prefix}layers.{i}."
        _split_qkv(out, b, src[a + "attn.qkv.weight"], src[a + "attn.qkv.bias"])
        copy_keys(src, out, _TIMM_BLOCK_PAIRS, a, b)
    return out


def timm_blocks_from_hf(src: StateDict, src_prefix: str, dst_prefix: str, layers: int) -> StateDict:
    """transformers ``{src_prefix}layers.{i}.*`` -> timm ViT ``{dst_prefix}blocks.{i}.*``."""
    out: StateDict = {}
    for i in range(layers):
        a, b = f"{src_prefix}layers.{i}.", f"{dst_prefix}blocks.{i}."
        out[b + "attn.qkv.weight"], out[b + "attn.qkv.bias"] = _join_qkv(src, a)
        copy_keys(src, out, [(h, t) for t, h in _TIMM_BLOCK_PAIRS], a, b)
    return out
