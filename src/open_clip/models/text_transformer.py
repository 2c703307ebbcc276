"""The native text transformer tower (``TextTransformer``) and ``lock_text_tower``.

The standard configuration (no class token, no padding mask) encodes through
``CausalTextEncoder``, the same path as ``CLIP.encode_text``, including its exact early stop
(``tower.early_stop = False`` turns it off).
"""

from typing import Optional, Union

import torch
from torch import nn

from .attention import Transformer, build_causal_mask
from .causal_text import CausalTextEncoder, text_global_pool, text_pool_positions
from .layers import LayerNorm

__all__ = ["TextTransformer", "text_global_pool", "text_pool_positions", "lock_text_tower"]

_POOL_TYPES = ("first", "last", "argmax", "eos", "none")


class TextTransformer(CausalTextEncoder, nn.Module):
    """Text tower: token + position embeddings, (causal) transformer, ``ln_final``, pooling and
    projection, with 3.3's parameter layout and seeded initialisation.

    Returns pooled [B, output_dim] (or ``(pooled, tokens)`` with ``output_tokens``).
    Attribute ``early_stop`` (default True) enables the exact early stop.
    """

    output_tokens: torch.jit.Final[bool]
    early_stop = True  # class default: towers pickled by 3.3 lack the instance attribute

    def __init__(
        self,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        heads: int = 8,
        layers: int = 12,
        mlp_ratio: float = 4.0,
        ls_init_value: Optional[float] = None,
        output_dim: Optional[int] = 512,
        embed_cls: bool = False,
        no_causal_mask: bool = False,
        use_pad_mask: bool = False,
        correct_cls_mask: bool = False,
        pad_id: int = 0,
        eos_id: int = 2,
        pool_type: str = "argmax",
        proj_type: str = "linear",
        proj_bias: bool = False,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = LayerNorm,
        output_tokens: bool = False,
        block_type: Optional[str] = None,
        qk_norm: bool = False,
        scaled_cosine_attn: bool = False,
        scale_heads: bool = False,
        scale_attn_inner: bool = False,
        scale_attn: bool = False,
        scale_fc: bool = False,
    ):
        super().__init__()
        assert pool_type in _POOL_TYPES
        self.output_tokens = output_tokens
        self.num_pos = self.context_length = context_length
        self.vocab_size = vocab_size
        self.width = width
        self.output_dim = output_dim
        self.heads = heads
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.pool_type = pool_type
        self.use_pad_mask = use_pad_mask and no_causal_mask
        self.correct_cls_mask = correct_cls_mask
        self.early_stop = True

        # creation order = RNG consumption order of 3.3 (seeded init equals 3.3's)
        self.token_embedding = nn.Embedding(vocab_size, width)
        if embed_cls:
            self.cls_emb = nn.Parameter(torch.empty(width))
            self.num_pos += 1
        else:
            self.cls_emb = None
        self.positional_embedding = nn.Parameter(torch.empty(self.num_pos, width))
        self.transformer = Transformer(
            width=width,
            layers=layers,
            heads=heads,
            mlp_ratio=mlp_ratio,
            ls_init_value=ls_init_value,
            act_layer=act_layer,
            norm_layer=norm_layer,
            block_type=block_type,
            qk_norm=qk_norm,
            scaled_cosine_attn=scaled_cosine_attn,
            scale_heads=scale_heads,
            scale_attn_inner=scale_attn_inner,
            scale_attn=scale_attn,
            scale_fc=scale_fc,
        )
        self.ln_final = norm_layer(width)
        if no_causal_mask:
            self.attn_mask = None
        else:
            self.register_buffer("attn_mask", self.build_causal_mask(), persistent=False)
        if proj_type == "none" or not output_dim:
            self.text_projection = None
        elif proj_bias:
            self.text_projection = nn.Linear(width, output_dim)
        else:
            self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.init_parameters()

    def init_parameters(self) -> None:
        """3.3's normal init of embeddings, block weights and projection (draws from the RNG)."""
        self._init_text_parameters()

    def init_weights(self) -> None:
        """Draw the parameters again as the constructor does (see ``materialize``)."""
        self._reset_text_modules()
        self.init_parameters()

    @torch.jit.unused
    def pooled_text_lengths(self, text: torch.Tensor) -> Optional[list[int]]:
        """See ``CLIP.pooled_text_lengths``."""
        return self._lengths_for(text, self.pool_type, self.eos_id)

    def build_causal_mask(self) -> torch.Tensor:
        """Additive causal mask [num_pos, num_pos] (float32, -inf above the diagonal)."""
        return build_causal_mask(self.num_pos)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        no_wd = {"positional_embedding"}
        if self.cls_emb is not None:
            no_wd.add("cls_emb")
        return no_wd

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the tower except its last ``unlocked_layers`` layer groups."""
        assert freeze_layer_norm, "Unfreezing LayerNorm is not supported. LayerNorm treated like other weights."
        lock_text_tower(self, unlocked_layers)

    def _build_additive_mask(self, text: torch.Tensor, seq_len: int, dtype: torch.dtype) -> torch.Tensor:
        """Key-padding mask [B*H, S, S] (row b*H + h), -inf at invalid keys."""
        valid = text != self.pad_id  # (B, L)
        if self.cls_emb is not None:
            cls_valid = torch.ones(valid.shape[0], 1, dtype=valid.dtype, device=valid.device)
            # legacy (3.3 default): the always-valid column goes FIRST although CLS is appended last
            valid = torch.cat([valid, cls_valid] if self.correct_cls_mask else [cls_valid, valid], dim=1)
        float_mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
        float_mask = float_mask.masked_fill(~valid, float("-inf"))  # (B, S)
        float_mask = float_mask[:, None, :].expand(-1, seq_len, -1)  # (B, S, S)
        return float_mask.repeat_interleave(self.heads, dim=0)

    def _embeds(self, text: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Token (+CLS) embeddings with positions, and the attention mask for them."""
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype)  # (B, L, W)
        cls_emb = self.cls_emb
        if cls_emb is not None:
            # cast: an fp32 CLS appended to fp16 tokens would promote the sequence (3.3 bug)
            x = torch.cat([x, cls_emb.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)], dim=1)
        seq_len = x.shape[1]
        attn_mask: Optional[torch.Tensor] = None
        causal_mask = self.attn_mask
        if causal_mask is not None:
            attn_mask = causal_mask[:seq_len, :seq_len]
        if self.use_pad_mask or cls_emb is not None:
            pad_mask = self._build_additive_mask(text, seq_len, x.dtype)
            attn_mask = pad_mask if attn_mask is None else attn_mask + pad_mask  # (B*H, S, S)
        x = x + self.positional_embedding[:seq_len].to(cast_dtype)
        return x, attn_mask

    def _pool_and_project(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cls_emb is not None:
            # CLS token is last: final LN after pooling; tokens are not normalised
            pooled = self.ln_final(x[:, -1])
            tokens = x[:, :-1]
        else:
            x = self.ln_final(x)
            pooled = text_global_pool(x, text, pool_type=self.pool_type, eos_token_id=self.eos_id)
            tokens = x
        return self._project(pooled), tokens

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        # early returns keep this scriptable for all three projection kinds
        if isinstance(self.text_projection, torch.Tensor):
            return pooled @ self.text_projection
        if self.text_projection is not None:
            return self.text_projection(pooled)  # nn.Linear (proj_bias=True)
        return pooled

    def forward(self, text: torch.Tensor, text_lengths: Optional[list[int]] = None):
        """Pooled, projected features [B, output_dim] (and the token features with ``output_tokens``).
        ``text_lengths``: see ``CLIP.encode_text``."""
        if self.cls_emb is None and not self.use_pad_mask and not self.output_tokens:
            return self._project(self._pooled_text(text, self.pool_type, self.eos_id, text_lengths))
        x, attn_mask = self._embeds(text)
        x = self.transformer(x, attn_mask=attn_mask)  # (B, S, W)
        pooled, tokens = self._pool_and_project(x, text)
        if self.output_tokens:
            return pooled, tokens
        return pooled

    def forward_intermediates(
        self,
        text: torch.Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        stop_early: bool = False,
        normalize_intermediates: bool = False,
        intermediates_only: bool = False,
        output_fmt: str = "NLC",
        output_extra_tokens: bool = False,
    ) -> dict[str, Union[torch.Tensor, list[torch.Tensor]]]:
        """Block outputs (``text_intermediates``; CLS column split into
        ``text_intermediates_suffix``) plus ``text_features`` unless ``intermediates_only``.
        Default ``output_fmt`` is 'NLC' (3.3's 'NCHW' default always failed)."""
        assert output_fmt == "NLC", "Output format must be NLC."
        x, attn_mask = self._embeds(text)
        x, intermediates = self.transformer.forward_intermediates(
            x, attn_mask=attn_mask, indices=indices, stop_early=stop_early
        )
        suffix = None
        if self.cls_emb is not None:
            suffix = [t[:, -1:] for t in intermediates]
            intermediates = [t[:, :-1] for t in intermediates]
        if normalize_intermediates:
            intermediates = [self.ln_final(t) for t in intermediates]
        output: dict[str, Union[torch.Tensor, list[torch.Tensor]]] = {"text_intermediates": intermediates}
        if suffix is not None and output_extra_tokens:
            output["text_intermediates_suffix"] = suffix
        if intermediates_only:
            return output
        output["text_features"], _ = self._pool_and_project(x, text)
        return output

    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep the blocks needed for ``indices``; optionally drop ``ln_final`` / the projection."""
        take_indices = self.transformer.prune_intermediate_layers(indices)
        if prune_norm:
            self.ln_final = nn.Identity()
        if prune_head:
            self.text_projection = None
        return take_indices


def lock_text_tower(model: nn.Module, unlocked_layers: int = 0) -> None:
    """Freeze a text tower (a CLIP with top-level text modules, a TextTransformer, or anything
    with ``.text``); then unfreeze the last ``unlocked_layers`` groups ([embeddings], block 0,
    …, [last block, ln_final], [text_projection])."""
    tower = model.text if isinstance(getattr(model, "text", None), nn.Module) else model
    embeds = [getattr(tower, n, None) for n in ("token_embedding", "positional_embedding", "cls_emb")]
    embeds = [e for e in embeds if e is not None]
    projection = getattr(tower, "text_projection", None)
    parts = [*embeds, tower.transformer, tower.ln_final, projection]

    def _set(x, flag: bool) -> None:
        if x is None:
            return
        if isinstance(x, nn.Parameter):
            x.requires_grad = flag
        elif isinstance(x, nn.Module):
            for p in x.parameters():
                p.requires_grad = flag
        else:
            for item in x:
                _set(item, flag)

    _set(parts, False)
    if unlocked_layers > 0:
        resblocks = list(tower.transformer.resblocks)
        groups = [embeds, *resblocks[:-1], [resblocks[-1], tower.ln_final]]
        if projection is not None:
            groups.append(projection)
        _set(groups[-min(unlocked_layers, len(groups)) :], True)
