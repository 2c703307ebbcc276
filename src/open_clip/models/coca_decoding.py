"""Next-token logits for CoCa captioning: a decoder state that the search loops drive.

Both decoders offer the same three calls, on rows that are (image, caption-so-far) pairs:
``reset(tokens)`` starts from a token window (B, L) and returns the logits after its last token
(B, V); ``extend(column)`` appends one token per row (B,) and returns the next logits;
``reorder(index)`` keeps / duplicates rows (beam search; a row may only take over the history of a
row with the same image, since cached decoder states depend on the image).

- ``FullPrefixDecoder`` re-runs the whole model on the window every step (3.3's procedure).
- ``CachedDecoder`` keeps per-layer keys/values of the causal text tower and of the decoder's
  self-attention, and the image keys/values of every cross-attention block (computed once), so a
  new token costs one pass of one position through the layers. It reproduces the text tower's
  3.3 CLS-mask quirk exactly: key j is valid iff j == 0 or token j-1 is not padding.
"""

from typing import Optional

import torch

from .attention import ResidualAttentionBlock
from .multimodal_transformer import (
    cached_cross_attention_block,
    cached_self_attention_block,
    cross_attention_kv,
)
from .text_transformer import TextTransformer

__all__ = ["FullPrefixDecoder", "CachedDecoder", "supports_kv_cache"]


class FullPrefixDecoder:
    """Logits from a full forward of the model on the current window (no cache)."""

    def __init__(self, model, image_latent: torch.Tensor, image_embs: torch.Tensor):
        self.model = model
        self.image_latent = image_latent
        self.image_embs = image_embs
        self.tokens: Optional[torch.Tensor] = None

    def _logits(self) -> torch.Tensor:
        out = self.model(
            None, self.tokens, image_latent=self.image_latent, image_embs=self.image_embs, output_labels=False
        )
        return out["logits"][:, -1]  # (B, V)

    def reset(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens = tokens
        return self._logits()

    def extend(self, column: torch.Tensor) -> torch.Tensor:
        self.tokens = torch.cat([self.tokens, column[:, None]], dim=1)
        return self._logits()

    def reorder(self, index: torch.Tensor) -> None:
        self.tokens = self.tokens[index]


def _default_blocks(blocks) -> bool:
    return all(type(b) is ResidualAttentionBlock and b.attn.batch_first for b in blocks)


def supports_kv_cache(model) -> bool:
    """True when ``CachedDecoder`` is exact for ``model``: a causal native text tower and a
    decoder made of default blocks. (HF / bidirectional text towers change every earlier token's
    output when a token is appended, so they must re-run the prefix.)"""
    text = getattr(model, "text", None)
    if not isinstance(text, TextTransformer) or text.attn_mask is None or text.use_pad_mask:
        return False
    decoder = model.text_decoder
    return (
        _default_blocks(text.transformer.resblocks)
        and _default_blocks(decoder.resblocks)
        and _default_blocks(decoder.cross_attn)
    )


class CachedDecoder:
    """Incremental decoding with key/value caches (see the module docstring)."""

    def __init__(self, model, image_embs: torch.Tensor):
        self.text: TextTransformer = model.text
        self.decoder = model.text_decoder
        self.image_kv = [cross_attention_kv(block, image_embs) for block in self.decoder.cross_attn]
        self.has_cls = self.text.cls_emb is not None
        # text positions available to tokens (the CLS token takes the last positional row)
        self.max_tokens = min(self.text.num_pos - int(self.has_cls), self.decoder.context_length)
        self.text_kv: list = []
        self.decoder_kv: list = []
        self.valid: Optional[torch.Tensor] = None  # (B, P) key validity (CLS-mask quirk)
        self.last: Optional[torch.Tensor] = None  # (B,) last token of each row
        self.length = 0

    def _embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        end = start + tokens.shape[1]
        if end > self.max_tokens:
            raise ValueError(
                f"caption length {end} exceeds what the model can encode ({self.max_tokens} tokens); "
                "use a smaller seq_len / max_seq_len"
            )
        cast_dtype = self.text.transformer.get_cast_dtype()
        x = self.text.token_embedding(tokens).to(cast_dtype)
        return x + self.text.positional_embedding[start:end].to(cast_dtype)  # (B, T, W)

    def _key_mask(self, dtype: torch.dtype) -> Optional[torch.Tensor]:
        if self.valid is None:
            return None
        mask = torch.zeros(self.valid.shape, dtype=dtype, device=self.valid.device)
        return mask.masked_fill(~self.valid, float("-inf"))[:, None, None, :]  # (B, 1, 1, P)

    def _run(self, x: torch.Tensor, text_mask: Optional[torch.Tensor], decoder_mask: Optional[torch.Tensor]):
        fresh = not self.text_kv
        text_kv, decoder_kv = [], []
        for i, block in enumerate(self.text.transformer.resblocks):
            x, kv = cached_self_attention_block(block, x, None if fresh else self.text_kv[i], text_mask)
            text_kv.append(kv)
        # decoder input: CoCa passes the pre-ln_final tokens with a CLS tower, normed ones without
        y = x if self.has_cls else self.text.ln_final(x)
        for i, (self_block, cross_block) in enumerate(zip(self.decoder.resblocks, self.decoder.cross_attn)):
            y, kv = cached_self_attention_block(self_block, y, None if fresh else self.decoder_kv[i], decoder_mask)
            decoder_kv.append(kv)
            y = cached_cross_attention_block(cross_block, y, self.image_kv[i])
        self.text_kv, self.decoder_kv = text_kv, decoder_kv
        return self.decoder.project(y[:, -1:])[:, 0]  # (B, V)

    def reset(self, tokens: torch.Tensor) -> torch.Tensor:
        self.text_kv, self.decoder_kv = [], []
        length = tokens.shape[1]
        x = self._embed(tokens, 0)
        causal = self.decoder.attn_mask[:length, :length].to(x.dtype)
        text_mask = self.text.attn_mask[:length, :length].to(x.dtype)
        self.valid = None
        if self.has_cls:
            if self.text.correct_cls_mask:
                self.valid = tokens != self.text.pad_id
            else:
                first = torch.ones_like(tokens[:, :1], dtype=torch.bool)
                self.valid = torch.cat([first, tokens[:, :-1] != self.text.pad_id], dim=1)
            text_mask = text_mask + self._key_mask(x.dtype)  # (B, 1, L, L)
        self.length, self.last = length, tokens[:, -1]
        return self._run(x, text_mask, causal)

    def extend(self, column: torch.Tensor) -> torch.Tensor:
        x = self._embed(column[:, None], self.length)
        if self.valid is not None:
            source = column if self.text.correct_cls_mask else self.last
            self.valid = torch.cat([self.valid, (source != self.text.pad_id)[:, None]], dim=1)
        self.length, self.last = self.length + 1, column
        # one query attends to every cached key: only the padding mask is needed
        return self._run(x, self._key_mask(x.dtype), None)

    def reorder(self, index: torch.Tensor) -> None:
        def pick(kv):
            return kv[0].index_select(0, index), kv[1].index_select(0, index)

        self.text_kv = [pick(kv) for kv in self.text_kv]
        self.decoder_kv = [pick(kv) for kv in self.decoder_kv]
        if self.valid is not None:
            self.valid = self.valid.index_select(0, index)
        self.last = self.last.index_select(0, index)
