"""CoCa (contrastive captioner): ``MultimodalCfg``, the decoder builder and the ``CoCa`` model.

A CoCa is a text tower (``text``, with a CLS token appended for the contrastive embedding), an
image tower (``visual``, an attentional pooler giving one contrastive query plus decoder tokens)
and a multimodal decoder (``text_decoder``) that predicts the next caption token from the text
tokens while attending to the image tokens. Caption generation lives in ``generation.py`` (the
search loops) and ``coca_decoding.py`` (incremental decoding with key/value caches).
"""

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .clip import (
    CLIPTextCfg,
    CLIPVisionCfg,
    CustomTextCLIP,
    _build_text_tower,
    _build_vision_tower,
    init_logit_parameters,
)
from .layers import LayerNorm, LayerNormFp32, QuickGELU
from .materialize import reset_tree
from .multimodal_transformer import MultimodalTransformer

__all__ = ["MultimodalCfg", "CoCa", "_build_text_decoder_tower"]


@dataclass
class MultimodalCfg(CLIPTextCfg):
    """Decoder settings (``multimodal_cfg``). Only context_length, width, heads, layers and
    ls_init_value are used; the other fields are accepted for config compatibility (3.3 quirk:
    the decoder MLP ratio is always 4 and its output size is the text vocabulary)."""
    mlp_ratio: int = 4
    dim_head: int = 64
    heads: int = 8
    n_queries: int = 256
    attn_pooler_heads: int = 8


def _build_text_decoder_tower(
    embed_dim: int,
    multimodal_cfg: Union[MultimodalCfg, dict[str, Any]],
    quick_gelu: bool = False,
    cast_dtype: Optional[torch.dtype] = None,
) -> MultimodalTransformer:
    """The CoCa decoder for ``multimodal_cfg`` with ``embed_dim`` outputs (the vocabulary size)."""
    if isinstance(multimodal_cfg, dict):
        multimodal_cfg = MultimodalCfg(**multimodal_cfg)
    act_layer = QuickGELU if quick_gelu else nn.GELU
    norm_layer = LayerNormFp32 if cast_dtype in (torch.float16, torch.bfloat16) else LayerNorm
    return MultimodalTransformer(
        context_length=multimodal_cfg.context_length,
        width=multimodal_cfg.width,
        heads=multimodal_cfg.heads,
        layers=multimodal_cfg.layers,
        ls_init_value=multimodal_cfg.ls_init_value,
        output_dim=embed_dim,
        act_layer=act_layer,
        norm_layer=norm_layer,
    )


class CoCa(nn.Module):
    """Contrastive captioner with 3.3's constructor, state-dict keys (``text.*``, ``visual.*``,
    ``text_decoder.*``, ``logit_scale`` [, ``logit_bias``]) and seeded initialisation order
    (text tower, image tower, decoder).

    Both towers must return tokens (configs set ``output_tokens``). ``forward`` always returns a
    dict; ``encode_image`` / ``encode_text`` normalise by default (3.3 quirk, unlike CLIP).
    """

    def __init__(
        self,
        embed_dim: int,
        multimodal_cfg: Union[MultimodalCfg, dict[str, Any]],
        text_cfg: Union[CLIPTextCfg, dict[str, Any]],
        vision_cfg: Union[CLIPVisionCfg, dict[str, Any]],
        quick_gelu: bool = False,
        init_logit_scale: float = math.log(1 / 0.07),
        init_logit_bias: Optional[float] = None,
        nonscalar_logit_scale: bool = False,
        cast_dtype: Optional[torch.dtype] = None,
        pad_id: int = 0,
    ):
        super().__init__()
        multimodal_cfg = MultimodalCfg(**multimodal_cfg) if isinstance(multimodal_cfg, dict) else multimodal_cfg
        text_cfg = CLIPTextCfg(**text_cfg) if isinstance(text_cfg, dict) else text_cfg
        vision_cfg = CLIPVisionCfg(**vision_cfg) if isinstance(vision_cfg, dict) else vision_cfg

        self.text = _build_text_tower(embed_dim, text_cfg, quick_gelu=quick_gelu, cast_dtype=cast_dtype)
        # the decoder predicts text_cfg.vocab_size ids, also with an HF text tower (3.3 layout; set
        # text_cfg.vocab_size to the HF tokenizer's size when training such a model)
        vocab_size = text_cfg.vocab_size
        self.visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu, cast_dtype=cast_dtype)
        self.text_decoder = _build_text_decoder_tower(
            vocab_size, multimodal_cfg, quick_gelu=quick_gelu, cast_dtype=cast_dtype
        )

        shape = [1] if nonscalar_logit_scale else []
        self.init_logit_scale = init_logit_scale
        self.init_logit_bias = init_logit_bias
        self.logit_scale = nn.Parameter(torch.ones(shape) * init_logit_scale)
        if init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.ones(shape) * init_logit_bias)
        else:
            self.logit_bias = None
        self.pad_id = pad_id
        self.context_length = multimodal_cfg.context_length

    def init_weights(self) -> None:
        """Draw every parameter again as the constructor does, text tower first (see ``materialize``)."""
        for tower in (self.text, self.visual, self.text_decoder):
            reset_tree(tower)
        init_logit_parameters(self)

    # ---- towers -------------------------------------------------------------------------------

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the image tower except its last ``unlocked_groups`` layer groups (3.3 lacked it)."""
        self.visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the text encoder (not the decoder) except its last ``unlocked_layers`` groups
        (3.3 lacked it)."""
        self.text.lock(unlocked_layers, freeze_layer_norm)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)
        self.text_decoder.set_grad_checkpointing(enable)

    def _encode_image(self, images: torch.Tensor, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(contrastive latent (B, E), image tokens (B, N, W)) for the decoder."""
        image_latent, tokens_embs = self.visual(images)
        image_latent = F.normalize(image_latent, dim=-1) if normalize else image_latent
        return image_latent, tokens_embs

    def _encode_text(self, text: torch.Tensor, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(contrastive latent (B, E), token embeddings (B, L, W), CLS removed, before ln_final)."""
        text_latent, token_emb = self.text(text)
        text_latent = F.normalize(text_latent, dim=-1) if normalize else text_latent
        return text_latent, token_emb

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._encode_image(images, normalize=normalize)[0]

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._encode_text(text, normalize=normalize)[0]

    # ---- forward ------------------------------------------------------------------------------

    def forward(
        self,
        image: Optional[torch.Tensor],
        text: Optional[torch.Tensor] = None,
        image_latent: Optional[torch.Tensor] = None,
        image_embs: Optional[torch.Tensor] = None,
        output_labels: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Features, next-token logits (B, L-1, V) and labels text[:, 1:] (with ``output_labels``;
        else logits for all L positions). Without text: {image_features, image_embs}."""
        if image_latent is None or image_embs is None:
            image_latent, image_embs = self._encode_image(image)
        if text is None:
            return {"image_features": image_latent, "image_embs": image_embs}

        text_latent, token_embs = self._encode_text(text)
        labels: Optional[torch.Tensor] = None
        if output_labels:
            # predict token i+1 from tokens <= i
            labels = text[:, 1:]
            token_embs = token_embs[:, :-1]
        logits = self.text_decoder(image_embs, token_embs)  # (B, S, V)
        out = {
            "image_features": image_latent,
            "text_features": text_latent,
            "logits": logits,
            "logit_scale": self.logit_scale.exp(),
        }
        if labels is not None:
            out["labels"] = labels
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    def forward_intermediates(
        self,
        image: Optional[torch.Tensor] = None,
        text: Optional[torch.Tensor] = None,
        image_indices=None,
        text_indices=None,
        stop_early: bool = False,
        normalize: bool = True,
        normalize_intermediates: bool = False,
        intermediates_only: bool = False,
        image_output_fmt: str = "NCHW",
        image_output_extra_tokens: bool = False,
        text_output_fmt: str = "NLC",
        text_output_extra_tokens: bool = False,
        output_logits: bool = False,
        output_logit_scale_bias: bool = False,
    ) -> dict[str, Any]:
        """Tower intermediates as ``CustomTextCLIP.forward_intermediates``; logits unsupported."""
        if output_logits and not intermediates_only:
            raise AssertionError("FIXME, needs implementing")
        # The two towers are laid out as in CustomTextCLIP (`visual`, `text`), so its assembly applies.
        return CustomTextCLIP.forward_intermediates(
            self, image, text, image_indices, text_indices, stop_early, normalize, normalize_intermediates,
            intermediates_only, image_output_fmt, image_output_extra_tokens, text_output_fmt,
            text_output_extra_tokens, False, output_logit_scale_bias,
        )

    _text_intermediates = CustomTextCLIP._text_intermediates

    # ---- captioning ---------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        image: torch.Tensor,
        text: Optional[torch.Tensor] = None,
        seq_len: int = 30,
        max_seq_len: int = 77,
        temperature: float = 1.0,
        generation_type: str = "beam_search",
        top_p: float = 0.1,
        top_k: int = 1,
        pad_token_id: Optional[int] = None,
        eos_token_id: Optional[int] = None,
        sot_token_id: Optional[int] = None,
        num_beams: int = 6,
        num_beam_groups: int = 3,
        min_seq_len: int = 5,
        stopping_criteria=None,
        repetition_penalty: float = 1.0,
        fixed_output_length: bool = False,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Caption ``image`` (B, 3, H, W): token ids (B, <= seq_len) starting with the SOT token.

        ``generation_type``: ``'beam_search'`` (diverse groups: ``num_beams`` split into
        ``num_beam_groups``), ``'top_k'`` or ``'top_p'`` sampling (``top_k=1`` is greedy). Sampling
        follows 3.3 step for step (min-length and repetition-penalty processors, top-k/top-p warper,
        then ``softmax(logits / temperature)``, one ``torch.multinomial`` draw per unfinished row,
        the last ``max_seq_len`` tokens as the window, eos forced at the last position), so seeded
        runs give 3.3's captions. ``text`` is an optional prompt (sampling only).

        Beam search scores candidates with log-probabilities (``log_softmax`` of the logits, then
        the processors), as Hugging Face's beam search does. **Difference from 3.3**: 3.3 summed
        raw logits, which ranks beams by unnormalised scores (a bug), so its beam captions can
        differ from ours. Everything else (groups, hypothesis bookkeeping, length normalisation,
        stopping, finalisation) follows HF 4.x's ``BeamSearchScorer``; no transformers needed.

        ``stopping_criteria``: None (stop at ``seq_len`` tokens), or callables / an HF
        ``StoppingCriteriaList`` called as ``c(input_ids, None)`` returning a bool (per row or
        overall). ``use_cache`` (beyond 3.3): decode incrementally with key/value caches (one
        decoder step per token); False re-runs the full prefix each step as 3.3 does. The model is
        put in eval mode and its previous mode restored (3.3 left beam search in train mode).
        """
        from .generation import generate_captions

        return generate_captions(
            self,
            image,
            text=text,
            seq_len=seq_len,
            max_seq_len=max_seq_len,
            temperature=temperature,
            generation_type=generation_type,
            top_p=top_p,
            top_k=top_k,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            sot_token_id=sot_token_id,
            num_beams=num_beams,
            num_beam_groups=num_beam_groups,
            min_seq_len=min_seq_len,
            stopping_criteria=stopping_criteria,
            repetition_penalty=repetition_penalty,
            fixed_output_length=fixed_output_length,
            use_cache=use_cache,
        )
