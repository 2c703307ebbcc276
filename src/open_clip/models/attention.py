"""Attention blocks and the plain transformer stack of the native towers.

Owns the custom ``Attention`` module, ``AttentionalPooler``, ``ResidualAttentionBlock``,
``CustomResidualAttentionBlock``, ``Transformer`` / ``CustomTransformer`` and
``build_causal_mask``.

The default block calls its ``nn.MultiheadAttention`` exactly as 3.3 does, so hooks on it, wrappers
and LoRA layers see and change the computation, and its outputs are 3.3's bit for bit. The towers'
fast paths instead hand blocks packed tokens (``token_layout``; see ``packed_tokens``), which they
only do when ``Transformer.can_pack_tokens`` finds nothing observing or overriding the stack.
"""

import math
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..utils import feature_take_indices
from .layers import LayerNorm, LayerNormFp32, LayerScale
from .materialize import draw, reset_tree
from .observers import has_user_hooks, runs_as_defined
from .packed_tokens import TokenLayout, fused_attention, sequence_first_attention, with_scratch
from .row_stable import linear_rows

__all__ = [
    "build_causal_mask",
    "Attention",
    "AttentionalPooler",
    "ResidualAttentionBlock",
    "CustomResidualAttentionBlock",
    "Transformer",
    "CustomTransformer",
]


def build_causal_mask(num_pos: int) -> torch.Tensor:
    """Additive causal mask [num_pos, num_pos], float32: 0 on/below the diagonal, -inf above."""
    mask = torch.empty(num_pos, num_pos)
    mask.fill_(float("-inf"))
    mask.triu_(1)
    return mask


class Attention(nn.Module):
    """Self-attention with optional QK-norm, scaled cosine attention, per-head scale and inner
    norm (the attention of ``CustomResidualAttentionBlock``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        scaled_cosine: bool = False,
        scale_heads: bool = False,
        inner_norm: bool = False,
        logit_scale_max: float = math.log(1.0 / 0.01),
        norm_layer: type[nn.Module] = LayerNormFp32,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        assert not (scaled_cosine and qk_norm), "Cannot activate both scaled cosine and QK normalization"
        assert dim % num_heads == 0, "dim should be divisible by num_heads"
        self.scaled_cosine = scaled_cosine
        self.scale_heads = scale_heads
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.logit_scale_max = logit_scale_max

        # creation order matters: seeded init draws in 3.3's order
        self.in_proj_weight = nn.Parameter(torch.randn((dim * 3, dim)) * self.scale)
        if qkv_bias:
            self.in_proj_bias = nn.Parameter(torch.zeros(dim * 3))
        else:
            self.in_proj_bias = None
        self.ln_q = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.ln_k = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        if self.scaled_cosine:
            self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))))
        else:
            self.logit_scale = None
        self.attn_drop = nn.Dropout(attn_drop)
        if self.scale_heads:
            self.head_scale = nn.Parameter(torch.ones((num_heads, 1, 1)))
        else:
            self.head_scale = None
        self.ln_inner = norm_layer(dim) if inner_norm else nn.Identity()
        self.out_proj = nn.Linear(dim, dim)
        self.out_drop = nn.Dropout(proj_drop)

    def init_weights(self) -> None:
        """Draw the parameters again as the constructor does (see ``materialize``)."""
        draw(self.in_proj_weight, lambda t: t.copy_(torch.randn(t.shape) * self.scale))
        draw(self.in_proj_bias, nn.init.zeros_)
        reset_tree(self.ln_q)
        reset_tree(self.ln_k)
        draw(self.logit_scale, lambda t: t.copy_(torch.log(10 * torch.ones(t.shape))))
        draw(self.head_scale, nn.init.ones_)
        reset_tree(self.ln_inner)
        reset_tree(self.out_proj)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, seq, width = x.shape  # (B, L, C)
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q = q.reshape(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, hd)
        k = k.reshape(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

        if attn_mask is not None:
            if attn_mask.ndim == 3:
                attn_mask = attn_mask.reshape(batch, self.num_heads, seq, seq)
            if attn_mask.dtype == torch.bool:
                # bool mask: True means "masked out" (PyTorch MHA convention)
                additive = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)
                attn_mask = additive.masked_fill(attn_mask, float("-inf"))
            else:
                attn_mask = attn_mask.to(q.dtype)

        logit_scale = self.logit_scale
        if logit_scale is not None:
            # batched matmul (3.3 used bmm on 4-D tensors, which always raised)
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
            attn = attn * torch.clamp(logit_scale, max=self.logit_scale_max).exp()
            if attn_mask is not None:
                attn = attn + attn_mask
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        else:
            q = self.ln_q(q)
            k = self.ln_k(k)
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0
            )

        head_scale = self.head_scale
        if head_scale is not None:
            x = x * head_scale
        x = x.transpose(1, 2).reshape(batch, seq, width)
        x = self.ln_inner(x)
        x = self.out_proj(x)
        x = self.out_drop(x)
        return x


class AttentionalPooler(nn.Module):
    """Cross-attention of ``n_queries`` learned queries over the tokens (CoCa image pooler)."""

    def __init__(
        self,
        d_model: int,
        context_dim: int,
        n_head: int = 8,
        n_queries: int = 256,
        norm_layer: type[nn.Module] = LayerNorm,
    ):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = norm_layer(d_model)
        self.ln_k = norm_layer(context_dim)

    def init_weights(self) -> None:
        """Draw the parameters again as the constructor does (see ``materialize``)."""
        draw(self.query, lambda t: t.copy_(torch.randn(t.shape)))
        for child in (self.attn, self.ln_q, self.ln_k):
            reset_tree(child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        x = self.ln_k(x)  # (B, L, ctx)
        # The query stays fp32 under fp16/bf16 (3.3's dtype table); meet the activations' dtype here.
        q = self.ln_q(self.query).to(x.dtype)
        out = self.attn(q.unsqueeze(0).expand(batch, -1, -1), x, x, need_weights=False)[0]
        return out  # (B, Q, d)


def _mlp(
    d_model: int, mlp_width: int, act_layer: type[nn.Module], inner_norm: Optional[nn.Module] = None
) -> nn.Sequential:
    layers = [("c_fc", nn.Linear(d_model, mlp_width)), ("gelu", act_layer())]
    if inner_norm is not None:
        layers.append(("ln", inner_norm))
    layers.append(("c_proj", nn.Linear(mlp_width, d_model)))
    return nn.Sequential(OrderedDict(layers))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block (the default block of every native tower).

    With ``is_cross_attention`` the block has ``ln_1_kv`` and attends from ``q_x`` to the given
    ``k_x`` / ``v_x`` (CoCa decoder); otherwise any passed k/v are ignored (self-attention).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        mlp_ratio: float = 4.0,
        ls_init_value: Optional[float] = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = LayerNorm,
        is_cross_attention: bool = False,
        batch_first: bool = True,
    ):
        super().__init__()
        self.ln_1 = norm_layer(d_model)
        # parameter container only (names + init as 3.3); forward goes through SDPA
        self.attn = nn.MultiheadAttention(d_model, n_head, batch_first=batch_first)
        self.ls_1 = LayerScale(d_model, ls_init_value) if ls_init_value is not None else nn.Identity()
        if is_cross_attention:
            self.ln_1_kv = norm_layer(d_model)
        self.ln_2 = norm_layer(d_model)
        self.mlp = _mlp(d_model, int(d_model * mlp_ratio), act_layer)
        self.ls_2 = LayerScale(d_model, ls_init_value) if ls_init_value is not None else nn.Identity()

    def get_weight_dtype(self) -> torch.dtype:
        if hasattr(self.mlp.c_fc, "int8_original_dtype"):
            return self.mlp.c_fc.int8_original_dtype
        return self.mlp.c_fc.weight.dtype

    def attention(
        self,
        q_x: torch.Tensor,
        k_x: Optional[torch.Tensor] = None,
        v_x: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        # Self-attention passes the very same tensor three times: nn.MultiheadAttention only takes
        # its fused inference path for `query is key is value`.
        k_x = k_x if k_x is not None else q_x
        v_x = v_x if v_x is not None else q_x
        # 3.3 casts any mask to the activation dtype: masks are additive (a bool mask becomes 0/1)
        attn_mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
        return self.attn(q_x, k_x, v_x, need_weights=False, attn_mask=attn_mask)[0]

    def forward(
        self,
        q_x: torch.Tensor,
        k_x: Optional[torch.Tensor] = None,
        v_x: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        token_layout: Optional[TokenLayout] = None,
    ) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if token_layout is not None:
                return self._forward_tokens(q_x, token_layout, attn_mask)
        if hasattr(self, "ln_1_kv") and k_x is not None and v_x is not None:
            k_x = self.ln_1_kv(k_x)
            v_x = self.ln_1_kv(v_x)
        else:
            k_x = None
            v_x = None
        x = q_x + self.ls_1(self.attention(self.ln_1(q_x), k_x, v_x, attn_mask))
        x = x + self.ls_2(self.mlp(self.ln_2(x)))
        return x

    @torch.jit.unused
    def _forward_tokens(
        self, x: torch.Tensor, layout: TokenLayout, attn_mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """``forward`` on the packed tokens ``x`` (T, C) of ``layout`` (self-attention, batch-first):
        returns (Q, C), this block's outputs at the layout's query tokens, equal bit for bit to
        the same tokens of ``forward`` on the whole batch."""
        h = self.ln_1(x)
        if layout.fused:
            out = fused_attention(self.attn, h, layout)
        else:
            out = sequence_first_attention(self.attn, h, layout, attn_mask)
        if layout.query_rows is not None:
            x = x[layout.query_rows]
        x = x + self.ls_1(out)
        reference = layout.batch * layout.length  # rows of the plain forward's MLP products
        mlp = self.mlp
        y = linear_rows(self.ln_2(x), mlp.c_fc.weight, mlp.c_fc.bias, reference)
        y = linear_rows(mlp.gelu(y), mlp.c_proj.weight, mlp.c_proj.bias, reference)
        return x + self.ls_2(y)

    @torch.jit.unused
    def can_pack_tokens(self) -> bool:
        """Whether ``_forward_tokens`` computes what ``forward`` would, unobserved: a plain
        self-attention block whose every submodule runs its own class's ``forward``, hook-free."""
        attn = self.attn
        mlp = self.mlp
        return (
            runs_as_defined(self, ResidualAttentionBlock)
            and not hasattr(self, "ln_1_kv")
            and runs_as_defined(attn, nn.MultiheadAttention)
            and attn.batch_first
            and attn._qkv_same_embed_dim
            and attn.bias_k is None
            and attn.bias_v is None
            and not attn.add_zero_attn
            and runs_as_defined(mlp, nn.Sequential)
            and list(mlp._modules) == ["c_fc", "gelu", "c_proj"]
            and runs_as_defined(mlp.c_fc, nn.Linear)
            and runs_as_defined(mlp.c_proj, nn.Linear)
            and not any(has_user_hooks(m) or "forward" in m.__dict__ for m in self.modules())
        )


class CustomResidualAttentionBlock(nn.Module):
    """Pre-norm block over the custom ``Attention`` with the optional extra norms / scales."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        mlp_ratio: float = 4.0,
        ls_init_value: Optional[float] = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = LayerNorm,
        qk_norm: bool = False,
        scale_cosine_attn: bool = False,
        scale_heads: bool = False,
        scale_attn_inner: bool = False,
        scale_attn: bool = False,
        scale_fc: bool = False,
        batch_first: bool = True,
    ):
        super().__init__()
        assert batch_first, "batch_first must be True for CustomResidualAttentionBlock"
        self.ln_1 = norm_layer(d_model)
        self.attn = Attention(
            d_model,
            n_head,
            qk_norm=qk_norm,
            scaled_cosine=scale_cosine_attn,
            scale_heads=scale_heads,
            inner_norm=scale_attn_inner,
            norm_layer=norm_layer,
        )
        self.ln_attn = norm_layer(d_model) if scale_attn else nn.Identity()
        self.ls_1 = LayerScale(d_model, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = norm_layer(d_model)
        mlp_width = int(d_model * mlp_ratio)
        self.mlp = _mlp(d_model, mlp_width, act_layer, norm_layer(mlp_width) if scale_fc else nn.Identity())
        self.ls_2 = LayerScale(d_model, ls_init_value) if ls_init_value is not None else nn.Identity()

    def get_weight_dtype(self) -> torch.dtype:
        if hasattr(self.mlp.c_fc, "int8_original_dtype"):
            return self.mlp.c_fc.int8_original_dtype
        return self.mlp.c_fc.weight.dtype

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.ls_1(self.ln_attn(self.attn(self.ln_1(x), attn_mask=attn_mask)))
        x = x + self.ls_2(self.mlp(self.ln_2(x)))
        return x


class Transformer(nn.Module):
    """A stack of residual attention blocks (``resblocks``) with optional grad checkpointing.

    ``block_type`` None picks ``'custom'`` when any custom feature is on; ``'custom'`` builds
    ``CustomResidualAttentionBlock``; anything else the default block (features dropped).
    Subclasses (the CoCa decoder) can reuse ``run_block`` for checkpoint-aware block calls.
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        ls_init_value: Optional[float] = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = LayerNorm,
        batch_first: bool = True,
        block_type: Optional[str] = None,
        qk_norm: bool = False,
        scaled_cosine_attn: bool = False,
        scale_heads: bool = False,
        scale_attn_inner: bool = False,
        scale_attn: bool = False,
        scale_fc: bool = False,
    ):
        super().__init__()
        self.width = width
        self.layers = layers
        self.batch_first = batch_first
        self.grad_checkpointing = False
        features = dict(
            qk_norm=qk_norm,
            scale_cosine_attn=scaled_cosine_attn,
            scale_heads=scale_heads,
            scale_attn_inner=scale_attn_inner,
            scale_attn=scale_attn,
            scale_fc=scale_fc,
        )
        if block_type is None:
            block_type = "custom" if any(features.values()) else "default"
        common = dict(mlp_ratio=mlp_ratio, ls_init_value=ls_init_value, act_layer=act_layer, norm_layer=norm_layer)
        if block_type == "custom":
            blocks = [
                CustomResidualAttentionBlock(width, heads, **common, **features, batch_first=batch_first)
                for _ in range(layers)
            ]
        else:
            blocks = [ResidualAttentionBlock(width, heads, **common, batch_first=batch_first) for _ in range(layers)]
        self.resblocks = nn.ModuleList(blocks)

    def get_cast_dtype(self) -> torch.dtype:
        return self.resblocks[0].get_weight_dtype()

    @torch.jit.ignore
    def run_block(
        self,
        block: nn.Module,
        x: torch.Tensor,
        k_x: Optional[torch.Tensor] = None,
        v_x: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Call one block (checkpointed when ``grad_checkpointing``); k/v only for cross blocks."""
        kwargs = {"attn_mask": attn_mask}
        if k_x is not None:
            kwargs.update(k_x=k_x, v_x=v_x)
        if self.grad_checkpointing:
            # keyword call: works for both block kinds (3.3's positional call broke custom blocks)
            return checkpoint(block, x, use_reentrant=False, **kwargs)
        return block(x, **kwargs)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        token_layout: Optional[TokenLayout] = None,
    ) -> torch.Tensor:
        """Run the blocks over x (B, L, C) (or packed tokens (T, C) of ``token_layout``, returning the
        last block's query tokens (Q, C); only when ``can_pack_tokens``)."""
        if not torch.jit.is_scripting():
            if token_layout is not None:
                return self._forward_tokens(x, attn_mask, token_layout)
        if not self.batch_first:
            x = x.transpose(0, 1).contiguous()  # (L, B, D)
        for r in self.resblocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(r, x, attn_mask=attn_mask, use_reentrant=False)
            else:
                x = r(x, attn_mask=attn_mask)
        if not self.batch_first:
            x = x.transpose(0, 1)  # (B, L, D)
        return x

    @torch.jit.unused
    def _forward_tokens(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor], layout: TokenLayout) -> torch.Tensor:
        layout = with_scratch(layout, x)
        # Every block but the last returns all packed tokens: later blocks need their keys/values.
        all_tokens = layout._replace(query_rows=None)
        last = len(self.resblocks) - 1
        if last < 0:
            return x if layout.query_rows is None else x[layout.query_rows]
        for i, block in enumerate(self.resblocks):
            block_layout = layout if i == last else all_tokens
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask=attn_mask, token_layout=block_layout, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, token_layout=block_layout)
        return x

    @torch.jit.unused
    def can_pack_tokens(self) -> bool:
        """Whether the towers may hand this stack packed tokens: a batch-first stack of plain
        default blocks that nothing observes or overrides (see ``ResidualAttentionBlock.can_pack_tokens``)."""
        return (
            runs_as_defined(self, Transformer)
            and self.batch_first
            and len(self.resblocks) > 0
            and all(isinstance(b, ResidualAttentionBlock) and b.can_pack_tokens() for b in self.resblocks)
        )

    def forward_intermediates(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        indices=None,
        stop_early: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the blocks, also returning the outputs of the blocks selected by ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.resblocks), indices)
        if not self.batch_first:
            x = x.transpose(0, 1).contiguous()
        blocks = self.resblocks[: max_index + 1] if stop_early else self.resblocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = self.run_block(blk, x, attn_mask=attn_mask)
            if i in take_indices:
                intermediates.append(x.transpose(0, 1) if not self.batch_first else x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return x, intermediates

    def prune_intermediate_layers(self, indices=1) -> list[int]:
        """Drop the blocks after the last index in ``indices``; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.resblocks), indices)
        self.resblocks = self.resblocks[: max_index + 1]
        return take_indices


class CustomTransformer(Transformer):
    """3.3's (unused) transformer variant that always builds custom blocks."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        ls_init_value: Optional[float] = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = LayerNorm,
        batch_first: bool = True,
        block_types="CustomResidualAttentionBlock",
    ):
        if block_types not in ("CustomResidualAttentionBlock", "custom"):
            raise ValueError(f"block_types {block_types!r} is not supported; use 'CustomResidualAttentionBlock'")
        super().__init__(
            width,
            layers,
            heads,
            mlp_ratio=mlp_ratio,
            ls_init_value=ls_init_value,
            act_layer=act_layer,
            norm_layer=norm_layer,
            batch_first=batch_first,
            block_type="custom",
        )
