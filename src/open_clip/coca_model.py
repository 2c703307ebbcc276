"""Compatibility module: 3.3's ``open_clip.coca_model`` names.

The model, its config and captioning live in ``open_clip.models`` (``coca.py``, ``generation.py``).
This module re-exports them with the tower helpers 3.3 imported here, and owns the small pieces of
3.3's generation API that callers reach for directly: ``GENERATION_TYPES`` (generation type ->
logits warper), the two warpers, ``prepare_inputs_for_generation`` and ``_token_to_tensor``.
"""

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch

from .models.clip import CLIPTextCfg, CLIPVisionCfg, _build_text_tower, _build_vision_tower  # noqa: F401
from .models.coca import CoCa, MultimodalCfg, _build_text_decoder_tower  # noqa: F401
from .models.generation import MaxLengthCriteria  # noqa: F401 (re-export)
from .models.layers import LayerNorm, LayerNormFp32, QuickGELU  # noqa: F401 (re-exports)
from .models.multimodal_transformer import MultimodalTransformer  # noqa: F401 (re-export)

# 3.3 set this when its transformers-based generation imports succeeded. Generation is native here
# and always available, so code that checks the flag before calling `generate` proceeds.
_has_transformers = True


class TopKLogitsWarper:
    """Keep the ``top_k`` highest scores of each row (at least ``min_tokens_to_keep``); the rest
    become ``filter_value``. Called as ``warper(input_ids, scores) -> scores``."""

    def __init__(self, top_k: int, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"`top_k` has to be a strictly positive integer, but is {top_k!r}")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth_best = torch.topk(scores, k, dim=-1).values[..., -1:]  # (B, 1)
        return scores.masked_fill(scores < kth_best, self.filter_value)


class TopPLogitsWarper:
    """Nucleus filter: drop the least likely tokens whose cumulative probability (ascending order)
    stays within ``1 - top_p``, always keeping ``min_tokens_to_keep``. ``warper(input_ids, scores)``."""

    def __init__(self, top_p: float, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        top_p = float(top_p)
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"`top_p` has to be a float in [0, 1], but is {top_p}")
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError(f"`min_tokens_to_keep` has to be a positive integer, but is {min_tokens_to_keep!r}")
        self.top_p = top_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - self.top_p)
        drop_sorted[..., -self.min_tokens_to_keep:] = False  # the most likely tokens sit at the end
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return scores.masked_fill(drop, self.filter_value)


# Generation type -> its logits warper (beam search has none), keyed in 3.3's order. `CoCa.generate`
# accepts exactly these keys.
GENERATION_TYPES: dict[str, Any] = {
    "top_k": TopKLogitsWarper,
    "top_p": TopPLogitsWarper,
    "beam_search": "beam_search",
}


def _token_to_tensor(token_id: Union[int, Sequence[int], torch.Tensor], device: Union[str, torch.device] = "cpu"):
    """A token id (or list of ids) as a 1-D tensor on ``device``; tensors are returned unchanged."""
    if isinstance(token_id, torch.Tensor):
        return token_id
    ids = [token_id] if isinstance(token_id, int) else list(token_id)
    return torch.tensor(ids, device=device)


def prepare_inputs_for_generation(
    input_ids: torch.Tensor, image_inputs: torch.Tensor, past: Optional[Any] = None, **kwargs: Any
) -> dict[str, Any]:
    """The keyword arguments of one CoCa decoding step, HF-``generate`` style.

    With ``past`` only the last token of each row is fed. Position ids are derived from an
    ``attention_mask`` (count of attended tokens so far, 1 at padding) unless given explicitly,
    in which case they are dropped, as in 3.3.
    """
    if past:
        input_ids = input_ids[:, -1:]  # (B, 1)
    attention_mask = kwargs.get("attention_mask")
    position_ids = None
    if attention_mask is not None and kwargs.get("position_ids") is None:
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids = position_ids.masked_fill(attention_mask == 0, 1)
    return {
        "text": input_ids,
        "images": image_inputs,
        "past_key_values": past,
        "position_ids": position_ids,
        "attention_mask": attention_mask,
    }
