"""The native vision transformer tower (``VisionTransformer``): patch embedding, class token,
position embeddings, transformer, pooling (token / average / attentional) and projection."""

from typing import Optional, Union

import torch
from torch import nn

from ..utils import to_2tuple
from .attention import AttentionalPooler, Transformer
from .causal_text import row_wise_norm
from .layers import LayerNorm, PatchDropout
from .materialize import assign, draw, reset_tree
from .observers import capturing_graph, global_user_hooks
from .packed_tokens import mha_uses_fused_path, pooled_token_layout
from .pos_embed import get_2d_sincos_pos_embed

__all__ = ["VisionTransformer"]


def _expand_token(token: torch.Tensor, batch_size: int) -> torch.Tensor:
    return token.view(1, 1, -1).expand(batch_size, -1, -1)


class VisionTransformer(nn.Module):
    """ViT image tower with 3.3's parameter layout (``conv1``, ``class_embedding``,
    ``positional_embedding``, ``ln_pre``, ``transformer``, ``ln_post``, ``proj``).

    Returns ``pooled`` [B, output_dim] (or ``(pooled, tokens)`` with ``output_tokens``).
    When only the class token is pooled (``pool_type='tok'``, no attentional pooler, no
    ``output_tokens``) the last block's attention output, MLP and ``ln_post`` run for that token
    alone (no other output of the last block is read; on CPU float32 the result is the full
    forward's bit for bit); ``last_block_pooled_only = False`` runs it over every token.
    """

    output_tokens: torch.jit.Final[bool]
    # class defaults: towers pickled by 3.3 lack these instance attributes
    last_block_pooled_only = True
    pos_embed_type = "learnable"
    attn_pool_type = ""

    def __init__(
        self,
        image_size: Union[int, tuple[int, int]],
        patch_size: Union[int, tuple[int, int]],
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        ls_init_value: Optional[float] = None,
        attentional_pool: Union[bool, str] = False,
        attn_pooler_queries: int = 256,
        attn_pooler_heads: int = 8,
        output_dim: int = 512,
        patch_dropout: float = 0.0,
        no_ln_pre: bool = False,
        pos_embed_type: str = "learnable",
        pool_type: str = "tok",
        final_ln_after_pool: bool = False,
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
        assert pool_type in ("tok", "avg", "none")
        self.output_tokens = output_tokens
        image_height, image_width = self.image_size = to_2tuple(image_size)
        patch_height, patch_width = self.patch_size = to_2tuple(patch_size)
        self.grid_size = (image_height // patch_height, image_width // patch_width)
        self.final_ln_after_pool = final_ln_after_pool
        self.output_dim = output_dim
        self.last_block_pooled_only = True

        # creation order = RNG consumption order of 3.3 (seeded init equals 3.3's)
        self.conv1 = nn.Conv2d(3, width, kernel_size=self.patch_size, stride=self.patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        num_pos = self.grid_size[0] * self.grid_size[1] + 1
        self.pos_embed_type = pos_embed_type
        if pos_embed_type == "learnable":
            self.positional_embedding = nn.Parameter(scale * torch.randn(num_pos, width))
        elif pos_embed_type == "sin_cos_2d":
            assert self.grid_size[0] == self.grid_size[1], (
                "currently sin cos 2d pos embedding only supports square input"
            )
            # fixed table, still a Parameter so it stays in the state dict; draws no RNG
            self.positional_embedding = nn.Parameter(torch.zeros(num_pos, width), requires_grad=False)
            table = get_2d_sincos_pos_embed(width, self.grid_size[0], cls_token=True)
            self.positional_embedding.data.copy_(torch.from_numpy(table).float())
        else:
            raise ValueError(f"pos_embed_type {pos_embed_type!r} is not supported; use 'learnable' or 'sin_cos_2d'")

        self.patch_dropout = PatchDropout(patch_dropout) if patch_dropout > 0.0 else nn.Identity()
        self.ln_pre = nn.Identity() if no_ln_pre else norm_layer(width)
        self.transformer = Transformer(
            width,
            layers,
            heads,
            mlp_ratio,
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

        self.attn_pool_type = ""
        self.pool_type = pool_type
        self.attn_pool_contrastive = None
        if attentional_pool:
            # the pooler norms stay plain LayerNorm (norm_layer is not passed, as in 3.3)
            if isinstance(attentional_pool, str):
                if attentional_pool not in ("parallel", "cascade"):
                    raise ValueError(
                        f"attentional_pool {attentional_pool!r} is not supported; use True, 'parallel' or 'cascade'"
                    )
                self.attn_pool_type = attentional_pool
                self.pool_type = "none"
                self.attn_pool = AttentionalPooler(
                    output_dim, width, n_head=attn_pooler_heads, n_queries=attn_pooler_queries
                )
                self.attn_pool_contrastive = AttentionalPooler(output_dim, width, n_head=attn_pooler_heads, n_queries=1)
            else:
                self.attn_pool = AttentionalPooler(
                    output_dim, width, n_head=attn_pooler_heads, n_queries=attn_pooler_queries
                )
            pool_dim = output_dim
        else:
            self.attn_pool = None
            pool_dim = width

        self.ln_post = norm_layer(pool_dim)
        self.proj = nn.Parameter(scale * torch.randn(pool_dim, output_dim))
        self.init_parameters()

    def init_parameters(self) -> None:
        # 3.3 keeps PyTorch's default init for the ViT blocks: nothing to do.
        pass

    def init_weights(self) -> None:
        """Draw the parameters again as the constructor does (see ``materialize``)."""
        scale = self.conv1.out_channels**-0.5
        reset_tree(self.conv1)
        draw(self.class_embedding, lambda t: t.copy_(scale * torch.randn(t.shape)))
        if self.pos_embed_type == "learnable":
            draw(self.positional_embedding, lambda t: t.copy_(scale * torch.randn(t.shape)))
        else:
            table = get_2d_sincos_pos_embed(self.positional_embedding.shape[1], self.grid_size[0], cls_token=True)
            assign(self.positional_embedding, torch.from_numpy(table).float())
        for child in (self.ln_pre, self.transformer, self.attn_pool, self.attn_pool_contrastive, self.ln_post):
            reset_tree(child)
        if self.proj is not None:
            draw(self.proj, lambda t: t.copy_(scale * torch.randn(t.shape)))

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze all parameters, then unfreeze the last ``unlocked_groups`` layer groups
        ([stem], block 0, …, [last block, ln_post], proj). ``attn_pool`` stays frozen."""
        for param in self.parameters():
            param.requires_grad = False
        if unlocked_groups == 0:
            return
        groups = [
            [self.conv1, self.class_embedding, self.positional_embedding, self.ln_pre],
            *self.transformer.resblocks[:-1],
            [self.transformer.resblocks[-1], self.ln_post],
            self.proj,
        ]

        def _unlock(x):
            if isinstance(x, (list, tuple)):
                for g in x:
                    _unlock(g)
            elif isinstance(x, torch.nn.Parameter):
                x.requires_grad = True
            elif x is not None:
                for p in x.parameters():
                    p.requires_grad = True

        _unlock(groups[-unlocked_groups:])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"positional_embedding", "class_embedding"}

    def _global_pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool_type == "avg":
            pooled, tokens = x[:, 1:].mean(dim=1), x[:, 1:]
        elif self.pool_type == "tok":
            pooled, tokens = x[:, 0], x[:, 1:]
        else:
            pooled, tokens = x, x
        return pooled, tokens

    def _pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool the transformer output; returns (pooled, tokens), before the projection."""
        if self.attn_pool is not None:
            if self.attn_pool_contrastive is not None:
                # experimental string modes: norm first, pooled keeps a length-1 middle dim
                x = self.ln_post(x)
                tokens = self.attn_pool(x)
                if self.attn_pool_type == "parallel":
                    pooled = self.attn_pool_contrastive(x)
                else:
                    pooled = self.attn_pool_contrastive(tokens)
            else:
                x = self.attn_pool(x)  # (B, Q, E)
                x = self.ln_post(x)
                pooled, tokens = self._global_pool(x)
        elif self.final_ln_after_pool:
            pooled, tokens = self._global_pool(x)
            pooled = self.ln_post(pooled)
        else:
            x = self.ln_post(x)
            pooled, tokens = self._global_pool(x)
        return pooled, tokens

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, W, gh, gw)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, gh*gw, W)
        x = torch.cat([_expand_token(self.class_embedding, x.shape[0]).to(x.dtype), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)  # (B, N+1, W)
        x = self.patch_dropout(x)
        return self.ln_pre(x)

    @torch.jit.unused
    def _class_token_only(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The class token's output of the last block (B, W), computing that block's attention
        output and MLP for it alone; None where that does not apply (other pooling, observers)."""
        if not (
            self.last_block_pooled_only
            and not self.output_tokens
            and self.pool_type == "tok"
            and self.attn_pool is None
            and not capturing_graph()
            and row_wise_norm(self.ln_post)
            and self.transformer.can_pack_tokens()
            and not global_user_hooks()
        ):
            return None
        batch, length, width = x.shape
        # The plain forward's attention takes torch's fused inference path when it can: so do we.
        fused = mha_uses_fused_path(self.transformer.resblocks[0].attn, x, float_mask=False)
        layout = pooled_token_layout(batch, length, 0, x.device, fused)
        return self.transformer(x.reshape(batch * length, width), token_layout=layout)

    def forward(self, x: torch.Tensor):
        x = self._embed(x)
        if not torch.jit.is_scripting():
            class_token = self._class_token_only(x)
            if class_token is not None:
                pooled = self.ln_post(class_token)
                return pooled @ self.proj if self.proj is not None else pooled
        x = self.transformer(x)
        pooled, tokens = self._pool(x)
        if self.proj is not None:
            pooled = pooled @ self.proj
        if self.output_tokens:
            return pooled, tokens
        return pooled

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        stop_early: bool = False,
        normalize_intermediates: bool = False,
        intermediates_only: bool = False,
        output_fmt: str = "NCHW",
        output_extra_tokens: bool = False,
    ) -> dict[str, Union[torch.Tensor, list[torch.Tensor]]]:
        """Features of selected blocks (``image_intermediates``, NCHW or NLC, class token split
        off into ``image_intermediates_prefix``) plus ``image_features`` unless
        ``intermediates_only``."""
        assert output_fmt in ("NCHW", "NLC"), "Output format must be one of NCHW or NLC."
        batch, _, height, width = x.shape
        x = self._embed(x)
        x, intermediates = self.transformer.forward_intermediates(x, indices=indices, stop_early=stop_early)
        if normalize_intermediates:
            intermediates = [self.ln_post(y) for y in intermediates]
        prefix_tokens = [y[:, :1] for y in intermediates]
        intermediates = [y[:, 1:] for y in intermediates]
        if output_fmt == "NCHW":
            grid_h, grid_w = height // self.patch_size[0], width // self.patch_size[1]
            intermediates = [
                y.reshape(batch, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates
            ]
        output: dict[str, Union[torch.Tensor, list[torch.Tensor]]] = {"image_intermediates": intermediates}
        if output_extra_tokens:
            output["image_intermediates_prefix"] = prefix_tokens
        if intermediates_only:
            return output
        pooled, _ = self._pool(x)
        if self.proj is not None:
            pooled = pooled @ self.proj
        output["image_features"] = pooled
        return output

    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep only the blocks needed for ``indices``; with ``prune_head`` drop the pooler,
        ``ln_post`` and ``proj``."""
        take_indices = self.transformer.prune_intermediate_layers(indices)
        if prune_head:
            self.attn_pool = None
            self.attn_pool_contrastive = None
            self.ln_post = nn.Identity()
            self.proj = None
        return take_indices
