"""The one encode path of native causal text towers, shared by ``CLIP`` (text parts at top level)
and ``TextTransformer``: token + position embeddings, transformer, ``ln_final`` and pooling.

Owns ``CausalTextEncoder`` (a mixin for modules with ``token_embedding``, ``positional_embedding``,
``transformer``, ``ln_final``, ``text_projection`` and ``attn_mask``: the encode path and the
initialisation of those parts), ``text_global_pool`` and ``text_pool_positions``.

Early stop: in a causal tower the output at position j depends only on positions <= j, and with
``argmax`` / ``eos`` pooling the pooled position of every row is known from the tokens. So the
token-wise work (norms, projections, MLPs) runs only on each row's tokens up to its pooled one, and
the last block only on the pooled tokens; attention runs on the full (batch, length) grid with
zeros in the skipped slots, which the causal mask hides. On CPU float32 this gives the very bits of
the full-length forward (see ``packed_tokens`` and ``row_stable``); elsewhere it is exact up to
float rounding, and attention is also trimmed to the longest kept row. It steps aside (runs the
full-length forward) whenever the result could be observed differently: hooks, patched or
replaced modules, scripting, tracing, compiling and exporting.
"""

from typing import Optional

import torch
from torch import nn

from .attention import build_causal_mask
from .layers import LayerNorm, LayerNormFp32
from .materialize import assign, draw, reset_tree
from .observers import capturing_graph, global_user_hooks, has_user_hooks, runs_as_defined
from .packed_tokens import causal_text_layout

__all__ = ["CausalTextEncoder", "text_global_pool", "text_pool_positions", "row_wise_norm"]


def text_global_pool(
    x: torch.Tensor,
    text: Optional[torch.Tensor] = None,
    pool_type: str = "argmax",
    eos_token_id: Optional[int] = None,
) -> torch.Tensor:
    """Pool token features x [B, L, D] to [B, D]: ``first``, ``last``, ``argmax`` (position of the
    largest token id), ``eos`` (first ``eos_token_id``); any other type returns x unchanged."""
    if pool_type == "first":
        return x[:, 0]
    if pool_type == "last":
        return x[:, -1]
    if pool_type == "argmax":
        assert text is not None
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
    if pool_type == "eos":
        assert text is not None
        assert eos_token_id is not None
        idx = (text == eos_token_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), idx]
    return x


def text_pool_positions(
    text: torch.Tensor, pool_type: str = "argmax", eos_token_id: Optional[int] = None
) -> Optional[torch.Tensor]:
    """Per-row position [B] that ``text_global_pool`` reads for token-dependent pool types
    (``argmax``: first largest id; ``eos``: first ``eos_token_id``, 0 if absent), else None."""
    if pool_type == "argmax":
        return text.argmax(dim=-1)
    if pool_type == "eos" and eos_token_id is not None:
        return (text == eos_token_id).int().argmax(dim=-1)
    return None


_ROW_WISE_FORWARDS = (LayerNorm.forward, LayerNormFp32.forward, nn.LayerNorm.forward, nn.Identity.forward)


def row_wise_norm(module: nn.Module) -> bool:
    """Whether ``module`` is an unobserved layer norm (or identity): applying it to some rows gives
    those rows of applying it to all, and nobody sees the difference in shape."""
    return (
        type(module).forward in _ROW_WISE_FORWARDS and "forward" not in module.__dict__ and not has_user_hooks(module)
    )


class CausalTextEncoder:
    """Mixin: ``_pooled_text(text, pool_type, eos_id)`` -> pooled features [B, width] after
    ``ln_final``, before the projection, for a causal (or bidirectional) native text tower.

    The host class says which attribute switches the early stop (``_early_stop_attribute``)."""

    _early_stop_attribute = "early_stop"

    def _reset_text_modules(self) -> None:
        """Default initialisation of the text modules, in the order the text tower creates them
        (the class token and position embedding start empty: ``_init_text_parameters`` draws them)."""
        reset_tree(self.token_embedding)
        reset_tree(self.transformer)
        reset_tree(self.ln_final)
        if isinstance(self.text_projection, nn.Module):
            reset_tree(self.text_projection)

    def _init_text_parameters(self) -> None:
        """3.3's normal init of the text tower's embeddings, block weights and projection."""
        normal = nn.init.normal_
        draw(self.token_embedding.weight, lambda t: normal(t, std=0.02))
        draw(self.positional_embedding, lambda t: normal(t, std=0.01))
        draw(getattr(self, "cls_emb", None), lambda t: normal(t, std=0.01))
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = (width**-0.5) * ((2 * layers) ** -0.5)
        attn_std = width**-0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            draw(block.attn.in_proj_weight, lambda t: normal(t, std=attn_std))
            draw(block.attn.out_proj.weight, lambda t: normal(t, std=proj_std))
            draw(block.mlp.c_fc.weight, lambda t: normal(t, std=fc_std))
            draw(block.mlp.c_proj.weight, lambda t: normal(t, std=proj_std))
        projection = self.text_projection
        if isinstance(projection, nn.Linear):
            draw(projection.weight, lambda t: normal(t, std=width**-0.5))
            draw(projection.bias, nn.init.zeros_)
        elif projection is not None:
            draw(projection, lambda t: normal(t, std=width**-0.5))

    def init_non_persistent_buffers(self) -> None:
        """Refill the causal mask (not in the state dict) in place."""
        if self.attn_mask is not None:
            assign(self.attn_mask, build_causal_mask(self.attn_mask.shape[0]))

    def _pooled_text(
        self,
        text: torch.Tensor,
        pool_type: str,
        eos_id: Optional[int],
        text_lengths: Optional[list[int]] = None,
    ) -> torch.Tensor:
        if not torch.jit.is_scripting():
            pooled = self._pooled_text_early_stop(text, pool_type, eos_id, text_lengths)
            if pooled is not None:
                return pooled
        seq_len = text.shape[1]
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype)  # (B, L, W)
        x = x + self.positional_embedding[:seq_len].to(cast_dtype)
        attn_mask = self.attn_mask
        if attn_mask is not None:
            attn_mask = attn_mask[:seq_len, :seq_len]
        x = self.transformer(x, attn_mask=attn_mask)
        x = self.ln_final(x)
        return text_global_pool(x, text, pool_type, eos_token_id=eos_id)

    @torch.jit.unused
    def _stops_early(self, pool_type: str) -> bool:
        """Whether this tower's pooled output depends only on a known prefix of each row."""
        return (
            getattr(self, self._early_stop_attribute, True)
            and self.attn_mask is not None
            and pool_type in ("argmax", "eos")
            and getattr(self, "cls_emb", None) is None
            and not getattr(self, "use_pad_mask", False)
            and not getattr(self, "output_tokens", False)
        )

    @torch.jit.unused
    def _lengths_for(self, text: torch.Tensor, pool_type: str, eos_id: Optional[int]) -> Optional[list[int]]:
        if not self._stops_early(pool_type) or text.dim() != 2:
            return None
        return (text_pool_positions(text, pool_type, eos_id) + 1).tolist()

    @torch.jit.unused
    def _can_pack(self) -> bool:
        return (
            not capturing_graph()
            and runs_as_defined(self.token_embedding, nn.Embedding)
            and row_wise_norm(self.ln_final)
            and self.transformer.can_pack_tokens()
            and not global_user_hooks()
        )

    @torch.jit.unused
    def _pooled_text_early_stop(
        self, text: torch.Tensor, pool_type: str, eos_id: Optional[int], lengths: Optional[list[int]]
    ) -> Optional[torch.Tensor]:
        """Pooled features computed only where they depend on, or None where that does not apply.

        ``lengths`` (pooled position + 1 of each row, host ints) spare reading them from ``text``;
        without them a step that builds an autograd graph keeps the full length (a training step
        must not wait for the device), while inference reads them."""
        if not self._stops_early(pool_type) or text.dim() != 2 or text.shape[0] == 0 or not self._can_pack():
            return None
        if lengths is None:
            if torch.is_grad_enabled():
                return None
            lengths = (text_pool_positions(text, pool_type, eos_id) + 1).tolist()
        else:
            lengths = [int(n) for n in lengths]
            if len(lengths) != text.shape[0] or not all(1 <= n <= text.shape[1] for n in lengths):
                raise ValueError(
                    f"text_lengths must give, for each of the {text.shape[0]} rows, the pooled position + 1 "
                    f"(1..{text.shape[1]}); got {lengths}"
                )
        cast_dtype = self.transformer.get_cast_dtype()
        # On CPU float32 attention keeps the full length: its kernels round the same then.
        bitwise = text.device.type == "cpu" and cast_dtype == torch.float32 and not torch.is_autocast_enabled()
        length = text.shape[1] if bitwise else max(lengths)
        attn = self.transformer.resblocks[0].attn
        layout, rows = causal_text_layout(
            lengths, length, text.device, attn.num_heads, attn.head_dim, bitwise=bitwise
        )
        tokens = text[rows[layout.token_batch], layout.token_pos]  # (T,)
        x = self.token_embedding(tokens).to(cast_dtype)
        x = x + self.positional_embedding[layout.token_pos].to(cast_dtype)  # (T, W)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length], token_layout=layout)  # (B, W)
        slot_of_row = torch.empty_like(rows)
        slot_of_row[rows] = torch.arange(rows.numel(), device=rows.device)
        return self.ln_final(x[slot_of_row])
