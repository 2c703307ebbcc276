"""The CoCa multimodal text decoder (``MultimodalTransformer``) and the block-level helpers that
run default ``ResidualAttentionBlock``s one decoding step at a time with a key/value cache.

The decoder alternates causal self-attention blocks (``resblocks``) with cross-attention blocks
(``cross_attn``, text queries over image tokens) and ends in ``ln_final`` and a vocabulary
projection. The cached helpers reuse the blocks' own weights (``attn.in_proj_weight`` etc.) so a
new token costs one pass over the layers instead of a re-run of the whole prefix.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ResidualAttentionBlock, Transformer, build_causal_mask
from .layers import LayerNorm
from .materialize import assign, reset_tree

__all__ = [
    "MultimodalTransformer",
    "cached_self_attention_block",
    "cross_attention_kv",
    "cached_cross_attention_block",
]

KeyValue = tuple[torch.Tensor, torch.Tensor]


class MultimodalTransformer(Transformer):
    """CoCa's decoder: ``layers`` x (causal self-attention block, cross-attention block) over
    text token embeddings, then ``ln_final`` and ``text_projection`` [width, output_dim].

    forward(image_embs (B, N, width), text_embs (B, S, width)) -> logits (B, S, output_dim).
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        context_length: int = 77,
        mlp_ratio: float = 4.0,
        ls_init_value: Optional[float] = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = LayerNorm,
        output_dim: int = 512,
        batch_first: bool = True,
    ):
        super().__init__(
            width=width,
            layers=layers,
            heads=heads,
            mlp_ratio=mlp_ratio,
            ls_init_value=ls_init_value,
            act_layer=act_layer,
            norm_layer=norm_layer,
            batch_first=batch_first,
        )
        # creation order = 3.3's RNG consumption order (seeded init equals 3.3's)
        self.context_length = context_length
        self.cross_attn = nn.ModuleList(
            [
                ResidualAttentionBlock(
                    width,
                    heads,
                    mlp_ratio,
                    ls_init_value=ls_init_value,
                    act_layer=act_layer,
                    norm_layer=norm_layer,
                    is_cross_attention=True,
                    batch_first=batch_first,
                )
                for _ in range(layers)
            ]
        )
        self.register_buffer("attn_mask", build_causal_mask(context_length), persistent=False)
        self.ln_final = norm_layer(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.init_parameters()

    def init_parameters(self) -> None:
        """Initialise ``text_projection`` ~ N(0, width^-0.5) (3.3 left it uninitialised memory).

        The values are the next draws of the global CPU generator, read from a copy of its state,
        so the global RNG stream is left exactly where 3.3 leaves it: every other parameter of a
        seeded CoCa, and anything drawn after construction, stays identical to 3.3. Blocks keep
        PyTorch's default init, as in 3.3.
        """
        proj = self.text_projection
        if proj.is_meta:
            return
        generator = torch.Generator()
        generator.set_state(torch.get_rng_state())
        assign(proj, torch.randn(tuple(proj.shape), generator=generator, device="cpu") * self.width**-0.5)

    def init_weights(self) -> None:
        """Draw the parameters again as the constructor does (see ``materialize``)."""
        for child in (self.resblocks, self.cross_attn, self.ln_final):
            reset_tree(child)
        self.init_parameters()

    def init_non_persistent_buffers(self) -> None:
        """Refill the causal mask (not in the state dict) in place."""
        assign(self.attn_mask, build_causal_mask(self.attn_mask.shape[0]))

    def build_attention_mask(self) -> torch.Tensor:
        """Additive causal mask [context_length, context_length] (float32, -inf above the diagonal)."""
        return build_causal_mask(self.context_length)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_intermediates(self, *args, **kwargs):
        raise AssertionError("Not currently implemented for MultimodalTransformer w/ xattn")

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """ln_final + vocabulary projection of decoder states (B, S, width) -> (B, S, vocab).

        The projection stays float32 under 'fp16'/'bf16' (3.3's dtype table); the states are cast
        to it rather than failing on mixed dtypes (3.3 raised), so logits come out in float32.
        """
        proj = self.text_projection
        return self.ln_final(x).to(proj.dtype) @ proj

    def forward(self, image_embs: torch.Tensor, text_embs: torch.Tensor) -> torch.Tensor:
        seq_len = text_embs.shape[1]
        if seq_len > self.context_length:
            raise ValueError(
                f"text length {seq_len} exceeds the decoder context_length {self.context_length}"
            )
        if not self.batch_first:
            image_embs = image_embs.transpose(0, 1)
            text_embs = text_embs.transpose(0, 1)
        attn_mask = self.attn_mask[:seq_len, :seq_len]
        x = text_embs  # (B, S, W)
        for self_block, cross_block in zip(self.resblocks, self.cross_attn):
            x = self.run_block(self_block, x, attn_mask=attn_mask)
            x = self.run_block(cross_block, x, k_x=image_embs, v_x=image_embs)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return self.project(x)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)  # (B, H, L, hd)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)  # (B, L, W)


def _finish_block(block: ResidualAttentionBlock, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """Output projection, residuals and MLP of a default block after its attention core."""
    out_proj = block.attn.out_proj
    x = x + block.ls_1(F.linear(_merge_heads(attended), out_proj.weight, out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def cached_self_attention_block(
    block: ResidualAttentionBlock,
    x: torch.Tensor,
    past: Optional[KeyValue],
    attn_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, KeyValue]:
    """Run a default self-attention block on new positions only.

    Args:
        x: new positions (B, T, W) (batch-first).
        past: cached (keys, values) (B, H, P, hd) of the earlier positions, or None.
        attn_mask: additive mask broadcastable to (B, H, T, P + T), or None (attend to all).

    Returns:
        (block output (B, T, W), updated (keys, values) (B, H, P + T, hd)).
    """
    attn = block.attn
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (_split_heads(t, attn.num_heads) for t in (q, k, v))
    if past is not None:
        k = torch.cat([past[0], k], dim=2)
        v = torch.cat([past[1], v], dim=2)
    if attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return _finish_block(block, x, attended), (k, v)


def _q_k_v_weights(block: ResidualAttentionBlock):
    attn = block.attn
    weights = attn.in_proj_weight.chunk(3)
    biases = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
    return weights, biases


def cross_attention_kv(block: ResidualAttentionBlock, image_embs: torch.Tensor) -> KeyValue:
    """Keys / values (B, H, N, hd) of a cross-attention block over image tokens (B, N, W),
    computed once per generation."""
    (_, w_k, w_v), (_, b_k, b_v) = _q_k_v_weights(block)
    kv_x = block.ln_1_kv(image_embs)
    heads = block.attn.num_heads
    return _split_heads(F.linear(kv_x, w_k, b_k), heads), _split_heads(F.linear(kv_x, w_v, b_v), heads)


def cached_cross_attention_block(block: ResidualAttentionBlock, x: torch.Tensor, image_kv: KeyValue) -> torch.Tensor:
    """Run a cross-attention block on new text positions x (B, T, W) against cached image K/V."""
    (w_q, _, _), (b_q, _, _) = _q_k_v_weights(block)
    q = _split_heads(F.linear(block.ln_1(x), w_q, b_q), block.attn.num_heads)
    attended = F.scaled_dot_product_attention(q, image_kv[0], image_kv[1])
    return _finish_block(block, x, attended)
