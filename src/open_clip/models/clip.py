"""CLIP and CustomTextCLIP: an image tower and a text tower joined by a learned logit scale.

Owns the config dataclasses (`CLIPVisionCfg`, `CLIPTextCfg`), the tower builders that map a config to
a native ViT / ModifiedResNet / TextTransformer (or a timm / HF tower, imported only when asked
for), the two model classes and the preprocess / tokenize cfg accessors stored on models. The
precision helpers live in `open_clip.precision` (re-exported here, where 3.3 had them).

State-dict keys are an external contract: `CLIP` keeps the text tower's parts at top level
(`token_embedding`, `positional_embedding`, `transformer`, `ln_final`, `text_projection`), while
`CustomTextCLIP` keeps the whole text tower under `text.`.
"""

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import convert_weights_to_fp16, convert_weights_to_lp, get_cast_dtype, get_input_dtype  # noqa: F401
from .causal_text import CausalTextEncoder, text_global_pool
from .layers import LayerNorm, LayerNormFp32, QuickGELU
from .materialize import assign, reset_tree
from .modified_resnet import ModifiedResNet
from .text_transformer import TextTransformer, lock_text_tower
from .vision_transformer import VisionTransformer


@dataclass
class CLIPVisionCfg:
    """Image tower settings (a `vision_cfg` dict in a model config)."""
    layers: Union[tuple[int, int, int, int], int] = 12
    width: int = 768
    head_width: int = 64
    mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: Union[tuple[int, int], int] = 224
    ls_init_value: Optional[float] = None
    patch_dropout: float = 0.
    attentional_pool: bool = False
    attn_pooler_queries: int = 256
    attn_pooler_heads: int = 8
    no_ln_pre: bool = False
    pos_embed_type: str = 'learnable'
    final_ln_after_pool: bool = False
    pool_type: str = 'tok'
    output_tokens: bool = False
    act_kwargs: Optional[dict] = None
    norm_kwargs: Optional[dict] = None
    block_type: Optional[str] = None
    qk_norm: bool = False
    scaled_cosine_attn: bool = False
    scale_heads: bool = False
    scale_attn_inner: bool = False
    scale_attn: bool = False
    scale_fc: bool = False
    timm_model_name: Optional[str] = None
    timm_model_pretrained: bool = False
    timm_pool: str = 'avg'
    timm_proj: str = 'linear'
    timm_proj_bias: bool = False
    timm_drop: float = 0.
    timm_drop_path: Optional[float] = None


@dataclass
class CLIPTextCfg:
    """Text tower settings (a `text_cfg` dict in a model config)."""
    context_length: int = 77
    vocab_size: int = 49408
    hf_tokenizer_name: Optional[str] = None
    tokenizer_mode: Optional[str] = None
    tokenizer_kwargs: Optional[dict] = None
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    ls_init_value: Optional[float] = None
    embed_cls: bool = False
    pad_id: int = 0
    eos_id: int = 2
    no_causal_mask: bool = False
    final_ln_after_pool: bool = False  # accepted for config compatibility; has no effect (as in 3.3)
    pool_type: str = 'argmax'
    proj_bias: bool = False
    proj_type: str = 'linear'
    output_tokens: bool = False
    act_kwargs: Optional[dict] = None
    norm_kwargs: Optional[dict] = None
    block_type: Optional[str] = None
    qk_norm: bool = False
    scaled_cosine_attn: bool = False
    scale_heads: bool = False
    scale_attn_inner: bool = False
    scale_attn: bool = False
    scale_fc: bool = False
    hf_model_name: Optional[str] = None
    hf_model_pretrained: bool = True
    hf_proj_type: str = 'mlp'
    hf_pooler_type: str = 'mean_pooler'




# ---------------------------------------------------------------------------------------------
# Tower builders
# ---------------------------------------------------------------------------------------------

def _norm_and_act(cfg: Union[CLIPVisionCfg, CLIPTextCfg], quick_gelu: bool, cast_dtype: Optional[torch.dtype]):
    """Norm / activation classes for native towers: LayerNormFp32 when built for fp16/bf16."""
    act_layer = QuickGELU if quick_gelu else nn.GELU
    norm_layer = LayerNormFp32 if cast_dtype in (torch.float16, torch.bfloat16) else LayerNorm
    if cfg.norm_kwargs:
        norm_layer = partial(norm_layer, **cfg.norm_kwargs)
    if cfg.act_kwargs is not None:
        act_layer = partial(act_layer, **cfg.act_kwargs)
    return norm_layer, act_layer


def _build_vision_tower(
        embed_dim: int,
        vision_cfg: Union[CLIPVisionCfg, dict[str, Any]],
        quick_gelu: bool = False,
        cast_dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """Image tower for a `vision_cfg`: timm model, ModifiedResNet (list `layers`) or native ViT."""
    if isinstance(vision_cfg, dict):
        vision_cfg = CLIPVisionCfg(**vision_cfg)
    if vision_cfg.timm_model_name:
        try:
            from ..timm_model import TimmModel
        except ModuleNotFoundError as e:
            raise RuntimeError(
                f"vision_cfg.timm_model_name='{vision_cfg.timm_model_name}' needs the timm image tower "
                f"(open_clip.timm_model and the 'timm' extra: pip install 'libreclip[timm]'): {e}"
            ) from e
        return TimmModel(
            vision_cfg.timm_model_name,
            pretrained=vision_cfg.timm_model_pretrained,
            pool=vision_cfg.timm_pool,
            proj=vision_cfg.timm_proj,
            proj_bias=vision_cfg.timm_proj_bias,
            drop=vision_cfg.timm_drop,
            drop_path=vision_cfg.timm_drop_path,
            patch_drop=vision_cfg.patch_dropout if vision_cfg.patch_dropout > 0 else None,
            embed_dim=embed_dim,
            image_size=vision_cfg.image_size,
        )
    if isinstance(vision_cfg.layers, (tuple, list)):
        return ModifiedResNet(
            layers=vision_cfg.layers,
            output_dim=embed_dim,
            heads=vision_cfg.width * 32 // vision_cfg.head_width,
            image_size=vision_cfg.image_size,
            width=vision_cfg.width,
        )
    norm_layer, act_layer = _norm_and_act(vision_cfg, quick_gelu, cast_dtype)
    return VisionTransformer(
        image_size=vision_cfg.image_size,
        patch_size=vision_cfg.patch_size,
        width=vision_cfg.width,
        layers=vision_cfg.layers,
        heads=vision_cfg.width // vision_cfg.head_width,
        mlp_ratio=vision_cfg.mlp_ratio,
        ls_init_value=vision_cfg.ls_init_value,
        patch_dropout=vision_cfg.patch_dropout,
        attentional_pool=vision_cfg.attentional_pool,
        attn_pooler_queries=vision_cfg.attn_pooler_queries,
        attn_pooler_heads=vision_cfg.attn_pooler_heads,
        pos_embed_type=vision_cfg.pos_embed_type,
        no_ln_pre=vision_cfg.no_ln_pre,
        final_ln_after_pool=vision_cfg.final_ln_after_pool,
        pool_type=vision_cfg.pool_type,
        output_tokens=vision_cfg.output_tokens,
        output_dim=embed_dim,
        act_layer=act_layer,
        norm_layer=norm_layer,
        **_block_features(vision_cfg),
    )


def _block_features(cfg: Union[CLIPVisionCfg, CLIPTextCfg]) -> dict[str, Any]:
    """Transformer-block options shared by the ViT and text towers."""
    names = ('block_type', 'qk_norm', 'scaled_cosine_attn', 'scale_heads', 'scale_attn_inner',
             'scale_attn', 'scale_fc')
    return {name: getattr(cfg, name) for name in names}


def _build_text_tower(
        embed_dim: int,
        text_cfg: Union[CLIPTextCfg, dict[str, Any]],
        quick_gelu: bool = False,
        cast_dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """Text tower for a `text_cfg`: HF transformers encoder (`hf_model_name`) or native TextTransformer."""
    if isinstance(text_cfg, dict):
        text_cfg = CLIPTextCfg(**text_cfg)
    if text_cfg.hf_model_name:
        try:
            from ..hf_model import HFTextEncoder
        except ModuleNotFoundError as e:
            raise RuntimeError(
                f"text_cfg.hf_model_name='{text_cfg.hf_model_name}' needs the Hugging Face text tower "
                f"(open_clip.hf_model and the 'hf' extra: pip install 'libreclip[hf]'): {e}"
            ) from e
        return HFTextEncoder(
            text_cfg.hf_model_name,
            output_dim=embed_dim,
            proj_type=text_cfg.hf_proj_type,
            pooler_type=text_cfg.hf_pooler_type,
            pretrained=text_cfg.hf_model_pretrained,
            output_tokens=text_cfg.output_tokens,
        )
    norm_layer, act_layer = _norm_and_act(text_cfg, quick_gelu, cast_dtype)
    return TextTransformer(
        context_length=text_cfg.context_length,
        vocab_size=text_cfg.vocab_size,
        width=text_cfg.width,
        heads=text_cfg.heads,
        layers=text_cfg.layers,
        mlp_ratio=text_cfg.mlp_ratio,
        ls_init_value=text_cfg.ls_init_value,
        output_dim=embed_dim,
        embed_cls=text_cfg.embed_cls,
        no_causal_mask=text_cfg.no_causal_mask,
        pad_id=text_cfg.pad_id,
        eos_id=text_cfg.eos_id,
        pool_type=text_cfg.pool_type,
        proj_type=text_cfg.proj_type,
        proj_bias=text_cfg.proj_bias,
        output_tokens=text_cfg.output_tokens,
        act_layer=act_layer,
        norm_layer=norm_layer,
        **_block_features(text_cfg),
    )


def init_logit_parameters(model: nn.Module) -> None:
    """Reset ``logit_scale`` / ``logit_bias`` to the constructor's values (no RNG)."""
    assign(model.logit_scale, torch.ones(tuple(model.logit_scale.shape)) * model.init_logit_scale)
    if model.logit_bias is not None:
        assign(model.logit_bias, torch.ones(tuple(model.logit_bias.shape)) * model.init_logit_bias)


class _TwoTowerModel(nn.Module):
    """What CLIP and CustomTextCLIP share: image encoding, logits, forward and intermediates."""

    # class defaults: models pickled by 3.3 lack these instance attributes
    init_logit_scale = math.log(1 / 0.07)
    init_logit_bias = None

    def _init_logit_params(self, init_logit_scale: float, init_logit_bias: Optional[float],
                           nonscalar_logit_scale: bool) -> None:
        self.init_logit_scale = init_logit_scale
        self.init_logit_bias = init_logit_bias
        shape = [1] if nonscalar_logit_scale else []
        self.logit_scale = nn.Parameter(torch.ones(shape) * init_logit_scale)
        if init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.ones(shape) * init_logit_bias)
        else:
            self.logit_bias = None

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        self.visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image embeddings (B, embed_dim) of images (B, 3, H, W); L2-normalised if `normalize`."""
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def get_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_logits, text_logits) = scaled cosine similarities (+ bias)."""
        image_features = self.encode_image(image, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        # The scale multiplies the image features before the matmul: 3.3's order, kept for bit-exactness.
        image_logits = self.logit_scale.exp() * image_features @ text_features.T
        if self.logit_bias is not None:
            image_logits += self.logit_bias
        return image_logits, image_logits.T

    def forward(
            self,
            image: Optional[torch.Tensor] = None,
            text: Optional[torch.Tensor] = None,
            text_lengths: Optional[list[int]] = None,
    ):
        """Normalised features of both inputs (None where an input is None) and exp(logit_scale)
        (+ raw logit_bias): a tuple, or a dict when `output_dict`. `text_lengths`: see `encode_text`."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True, text_lengths=text_lengths) if text is not None else None
        if self.output_dict:
            out = {
                'image_features': image_features,
                'text_features': text_features,
                'logit_scale': self.logit_scale.exp(),
            }
            if self.logit_bias is not None:
                out['logit_bias'] = self.logit_bias
            return out
        if self.logit_bias is not None:
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()

    def forward_intermediates(
            self,
            image: Optional[torch.Tensor] = None,
            text: Optional[torch.Tensor] = None,
            image_indices: Optional[Union[int, list[int]]] = None,
            text_indices: Optional[Union[int, list[int]]] = None,
            stop_early: bool = False,
            normalize: bool = True,
            normalize_intermediates: bool = False,
            intermediates_only: bool = False,
            image_output_fmt: str = 'NCHW',
            image_output_extra_tokens: bool = False,
            text_output_fmt: str = 'NLC',
            text_output_extra_tokens: bool = False,
            output_logits: bool = False,
            output_logit_scale_bias: bool = False,
    ) -> dict[str, Any]:
        """Per-block features of both towers, plus pooled features, logits and scale on request."""
        if intermediates_only:
            normalize, output_logits = False, False
        if output_logits:
            assert image is not None and text is not None, 'Both image and text inputs are required to compute logits'
        out: dict[str, Any] = {}
        if image is not None:
            out.update(self.visual.forward_intermediates(
                image,
                indices=image_indices,
                stop_early=stop_early,
                normalize_intermediates=normalize_intermediates,
                intermediates_only=intermediates_only,
                output_fmt=image_output_fmt,
                output_extra_tokens=image_output_extra_tokens,
            ))
            if normalize and 'image_features' in out:
                out['image_features'] = F.normalize(out['image_features'], dim=-1)
        if text is not None:
            out.update(self._text_intermediates(
                text, text_indices, stop_early, normalize_intermediates, intermediates_only,
                text_output_fmt, text_output_extra_tokens,
            ))
            if normalize and 'text_features' in out:
                out['text_features'] = F.normalize(out['text_features'], dim=-1)
        if output_logits:
            image_logits = self.logit_scale.exp() * out['image_features'] @ out['text_features'].T
            if self.logit_bias is not None:
                image_logits += self.logit_bias
            out['image_logits'] = image_logits
            out['text_logits'] = image_logits.T
        if output_logit_scale_bias:
            out['logit_scale'] = self.logit_scale.exp()
            if self.logit_bias is not None:
                out['logit_bias'] = self.logit_bias
        return out


class CLIP(CausalTextEncoder, _TwoTowerModel):
    """CLIP with a native text tower whose parts live at top level (3.3's state-dict layout).

    Args mirror the model-config JSON: `embed_dim`, `vision_cfg`, `text_cfg`, `quick_gelu`,
    `init_logit_scale`, `init_logit_bias` (creates `logit_bias`), `nonscalar_logit_scale` (shape [1]
    instead of []), `cast_dtype` (LayerNormFp32 for fp16/bf16) and `output_dict`.
    Set `text_early_stop = False` to run the text transformer over all positions (`visual.last_block_pooled_only`
    is the image tower's counterpart).
    """
    output_dict: torch.jit.Final[bool]
    text_early_stop = True  # class default: models pickled by 3.3 lack the instance attribute
    _early_stop_attribute = 'text_early_stop'

    def __init__(
            self,
            embed_dim: int,
            vision_cfg: Union[CLIPVisionCfg, dict[str, Any]],
            text_cfg: Union[CLIPTextCfg, dict[str, Any]],
            quick_gelu: bool = False,
            init_logit_scale: float = math.log(1 / 0.07),
            init_logit_bias: Optional[float] = None,
            nonscalar_logit_scale: bool = False,
            cast_dtype: Optional[torch.dtype] = None,
            output_dict: bool = False,
    ):
        super().__init__()
        self.output_dict = output_dict
        self.visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu, cast_dtype)

        # The text tower is built whole (same RNG use as 3.3), then unpacked to top-level attributes.
        text = _build_text_tower(embed_dim, text_cfg, quick_gelu, cast_dtype)
        self.transformer = text.transformer
        self.context_length = text.context_length
        self.vocab_size = text.vocab_size
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.text_pool_type = text.pool_type
        self.text_eos_id = text.eos_id
        self.register_buffer('attn_mask', text.attn_mask, persistent=False)
        self.text_early_stop = True

        self._init_logit_params(init_logit_scale, init_logit_bias, nonscalar_logit_scale)

    def init_weights(self) -> None:
        """Draw every parameter again as the constructor does, image tower first (see ``materialize``)."""
        reset_tree(self.visual)
        self._reset_text_modules()
        self._init_text_parameters()
        init_logit_parameters(self)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        assert freeze_layer_norm, 'Unfreezing LayerNorm is not supported. LayerNorm treated like other weights.'
        lock_text_tower(self, unlocked_layers)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.transformer.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self):
        no_wd = {'positional_embedding'}
        if hasattr(self.visual, 'no_weight_decay'):
            for name in self.visual.no_weight_decay():
                no_wd.add('visual.' + name)
        return no_wd

    def _project_text(self, x: torch.Tensor) -> torch.Tensor:
        # Tensor check first: TorchScript resolves it statically (isinstance(m, nn.Linear) is not).
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, torch.Tensor):
            return x @ self.text_projection
        return self.text_projection(x)

    def encode_text(
            self, text: torch.Tensor, normalize: bool = False, text_lengths: Optional[list[int]] = None
    ) -> torch.Tensor:
        """Text embeddings (B, embed_dim) of token ids (B, context_length); L2-normalised if `normalize`.

        `text_lengths` (optional, host ints): the pooled position + 1 of each row, as
        `pooled_text_lengths` gives them from a CPU copy of `text`. They let the early stop run
        without reading the device; without them a step that records gradients runs full length."""
        pooled = self._pooled_text(text, self.text_pool_type, self.text_eos_id, text_lengths)
        x = self._project_text(pooled)
        return F.normalize(x, dim=-1) if normalize else x

    @torch.jit.unused
    def pooled_text_lengths(self, text: torch.Tensor) -> Optional[list[int]]:
        """For each row of `text` (best a CPU copy), the number of leading tokens its embedding
        depends on (`encode_text`'s `text_lengths`), or None when it depends on all of them."""
        return self._lengths_for(text, self.text_pool_type, self.text_eos_id)

    def _text_intermediates(self, text: torch.Tensor, indices, stop_early: bool, normalize_intermediates: bool,
                            intermediates_only: bool, output_fmt: str, output_extra_tokens: bool) -> dict[str, Any]:
        # stop_early / output format are not forwarded to the unpacked transformer (as in 3.3).
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype)
        x = x + self.positional_embedding.to(cast_dtype)
        x, intermediates = self.transformer.forward_intermediates(x, attn_mask=self.attn_mask, indices=indices)
        if normalize_intermediates:
            intermediates = [self.ln_final(xi) for xi in intermediates]
        out: dict[str, Any] = {'text_intermediates': intermediates}
        if not intermediates_only:
            x = text_global_pool(self.ln_final(x), text, self.text_pool_type, eos_token_id=self.text_eos_id)
            out['text_features'] = self._project_text(x)
        return out


class CustomTextCLIP(_TwoTowerModel):
    """CLIP whose text tower is kept whole under `text.` (SigLIP-style, HF text, custom towers).

    Same constructor arguments as `CLIP`.
    """
    output_dict: torch.jit.Final[bool]

    def __init__(
            self,
            embed_dim: int,
            vision_cfg: Union[CLIPVisionCfg, dict[str, Any]],
            text_cfg: Union[CLIPTextCfg, dict[str, Any]],
            quick_gelu: bool = False,
            init_logit_scale: float = math.log(1 / 0.07),
            init_logit_bias: Optional[float] = None,
            nonscalar_logit_scale: bool = False,
            cast_dtype: Optional[torch.dtype] = None,
            output_dict: bool = False,
    ):
        super().__init__()
        self.output_dict = output_dict
        self.visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu, cast_dtype)
        self.text = _build_text_tower(embed_dim, text_cfg, quick_gelu, cast_dtype)
        self.context_length = self.text.context_length
        self.vocab_size = self.text.vocab_size
        self._init_logit_params(init_logit_scale, init_logit_bias, nonscalar_logit_scale)

    def init_weights(self) -> None:
        """Draw every parameter again as the constructor does, image tower first (see ``materialize``)."""
        reset_tree(self.visual)
        reset_tree(self.text)
        init_logit_parameters(self)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        self.text.lock(unlocked_layers, freeze_layer_norm)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self):
        no_wd = set()
        for prefix, tower in (('visual.', self.visual), ('text.', self.text)):
            if hasattr(tower, 'no_weight_decay'):
                no_wd.update(prefix + name for name in tower.no_weight_decay())
        return no_wd

    def encode_text(
            self, text: torch.Tensor, normalize: bool = False, text_lengths: Optional[list[int]] = None
    ) -> torch.Tensor:
        """Text embeddings (B, embed_dim) of token ids; L2-normalised if `normalize`. `text_lengths`:
        see `CLIP.encode_text` (native text towers only)."""
        features = self.text(text) if text_lengths is None else self.text(text, text_lengths)
        return F.normalize(features, dim=-1) if normalize else features

    @torch.jit.unused
    def pooled_text_lengths(self, text: torch.Tensor) -> Optional[list[int]]:
        """See `CLIP.pooled_text_lengths` (None for text towers without an early stop)."""
        lengths = getattr(self.text, 'pooled_text_lengths', None)
        return lengths(text) if lengths is not None else None

    def _text_intermediates(self, text: torch.Tensor, indices, stop_early: bool, normalize_intermediates: bool,
                            intermediates_only: bool, output_fmt: str, output_extra_tokens: bool) -> dict[str, Any]:
        return self.text.forward_intermediates(
            text,
            indices=indices,
            stop_early=stop_early,
            normalize_intermediates=normalize_intermediates,
            intermediates_only=intermediates_only,
            output_fmt=output_fmt,
            output_extra_tokens=output_extra_tokens,
        )


# ---------------------------------------------------------------------------------------------
# Preprocess / tokenize cfg stored on models
# ---------------------------------------------------------------------------------------------

def set_model_preprocess_cfg(model: nn.Module, preprocess_cfg: dict[str, Any]) -> None:
    """Attach a preprocess cfg to `model.visual` (or `model`), with legacy `image_mean`/`image_std`."""
    module = getattr(model, 'visual', model)
    module.image_mean = preprocess_cfg['mean']
    module.image_std = preprocess_cfg['std']
    module.preprocess_cfg = copy.deepcopy(preprocess_cfg)


def get_model_preprocess_cfg(model: nn.Module) -> dict[str, Any]:
    """The model's preprocess cfg (by reference), or one rebuilt from legacy image_size/mean/std."""
    module = getattr(model, 'visual', model)
    preprocess_cfg = getattr(module, 'preprocess_cfg', {})
    if not preprocess_cfg:
        preprocess_cfg = {}
        size = module.image_size
        if size is not None:
            preprocess_cfg['size'] = size
        mean = getattr(module, 'image_mean', None)
        if mean is not None:
            preprocess_cfg['mean'] = mean
        std = getattr(module, 'image_std', None)
        if std is not None:
            preprocess_cfg['std'] = std
    return preprocess_cfg


def get_model_tokenize_cfg(model: nn.Module) -> dict[str, Any]:
    """`context_length` and `vocab_size` of the model's text tower (those that are set)."""
    module = getattr(model, 'text', model)
    cfg = {}
    context_length = getattr(module, 'context_length', None)
    if context_length is not None:
        cfg['context_length'] = context_length
    vocab_size = getattr(module, 'vocab_size', None)
    if vocab_size is not None:
        cfg['vocab_size'] = vocab_size
    return cfg
