"""CLIP byte-level BPE tokenizer (OpenCLIP 3.3 compatible) and the module-level ``tokenize``.

Owns: the byte <-> unicode table, vocabulary construction from the packaged merges file,
``SimpleTokenizer`` (a pure-Python reference path and a batched fast path with identical ids),
``tokenize`` / ``decode``. Cleaning lives in ``tokenizer_clean``, the fast path in
``tokenizer_fast``, reduction masks in ``tokenizer_masks`` and the Hugging Face based tokenizers in
``tokenizer_hf``; their public names are re-exported here so 3.3 import paths keep working.
"""

import gzip
import os
import threading
from collections.abc import Iterable
from functools import lru_cache
from numbers import Integral
from typing import Optional, Union

import numpy as np
import regex
import torch

from .tokenizer_clean import (  # noqa: F401  (re-exported 3.3 names)
    _clean_canonicalize,
    _clean_lower,
    _clean_whitespace,
    basic_clean,
    canonicalize_text,
    get_clean_fn,
    whitespace_clean,
)
from .tokenizer_fast import FastEncoder, fill_rows
from .tokenizer_hf import HFTokenizer, SigLipTokenizer  # noqa: F401
from .tokenizer_masks import (  # noqa: F401
    get_reduction_mask_fn,
    random_mask_tokenize,
    simple_mask_tokenize,
    syntax_mask_tokenize,
)

# 3.3 sets this on import so HF tokenizers used next to DataLoader workers don't warn/deadlock.
os.environ["TOKENIZERS_PARALLELISM"] = "false"

DEFAULT_CONTEXT_LENGTH = 77  # default context length for OpenAI CLIP
_NUM_MERGES = 49152 - 256 - 2  # merges used: lines 1..48894 of the vocab file
_PATTERN_TAIL = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@lru_cache
def default_bpe() -> str:
    """Absolute path of the packaged ``bpe_simple_vocab_16e6.txt.gz``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Bijection byte -> printable character; insertion order defines vocab ids 0..255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            # Whitespace/control bytes get code points 256+ so every byte char is visible.
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def get_pairs(word: tuple) -> set:
    """Set of adjacent symbol pairs of a tuple of symbols."""
    return set(zip(word[:-1], word[1:]))


@lru_cache(maxsize=4)
def _load_merges(bpe_path: str) -> tuple:
    """The first 48,894 merges of a CLIP vocab file as a tuple of (a, b) pairs."""
    with gzip.open(bpe_path) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    return tuple(tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1])


def _check_context_length(value, name: str = "context_length") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")


def _as_text_list(texts) -> list:
    """Normalise ``texts`` (a str or an iterable of str) to a list, naming any bad item."""
    if isinstance(texts, str):
        return [texts]
    if texts is None or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return texts


class SimpleTokenizer:
    """OpenAI CLIP byte-level BPE tokenizer.

    Args:
        bpe_path: gzip'd merges file (default: the packaged vocab).
        additional_special_tokens: extra special tokens, ids 49408, 49409, ...
        context_length: default row length of ``__call__`` (None: must be given per call).
        clean: ``'lower'``, ``'whitespace'`` or ``'canonicalize'``.
        reduction_mask: ``''`` or one of ``'simple'``, ``'random'``, ``'shuffle'``, ``'syntax'``.
        fast: use the batched fast path (same ids as the reference path, ``fast=False``).
    """

    def __init__(
        self,
        bpe_path: str = default_bpe(),
        additional_special_tokens: Optional[list[str]] = None,
        context_length: Optional[int] = DEFAULT_CONTEXT_LENGTH,
        clean: str = "lower",
        reduction_mask: str = "",
        *,
        fast: bool = True,
    ):
        _check_context_length(context_length)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        merges = _load_merges(bpe_path)
        special_tokens = ["<start_of_text>", "<end_of_text>"]
        if additional_special_tokens:
            special_tokens += list(additional_special_tokens)
        byte_chars = list(self.byte_encoder.values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
        vocab += special_tokens
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {t: t for t in special_tokens}
        # Escaped: 3.3 inserted the tokens raw, so e.g. "[MASK]" became a character class (fixed).
        specials = "|".join(regex.escape(t) for t in special_tokens)
        self.pat = regex.compile(specials + "|" + _PATTERN_TAIL, regex.IGNORECASE)
        self.vocab_size = len(self.encoder)
        self.all_special_ids = [self.encoder[t] for t in special_tokens]
        self.sot_token_id = self.all_special_ids[0]
        self.eot_token_id = self.all_special_ids[1]
        self.context_length = context_length
        self.clean_fn = get_clean_fn(clean)
        self.clean = clean
        self.reduction_fn = get_reduction_mask_fn(reduction_mask) if reduction_mask else None
        self.fast = fast
        self._special_tokens = special_tokens
        self._merges = merges
        self._bpe_path = bpe_path
        self._fast_lock = threading.Lock()
        self._fast_encoder: Optional[FastEncoder] = None

    def __getstate__(self) -> dict:
        # Picklable for DataLoader workers: the lock and the fast encoder (caches, shared BPE
        # model) are rebuilt on demand.
        state = self.__dict__.copy()
        state["_fast_lock"] = None
        state["_fast_encoder"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fast_lock = threading.Lock()

    # ---------------------------------------------------------------- reference algorithm
    def bpe(self, token: str) -> str:
        """BPE-merge one byte-mapped regex piece; returns space-separated vocab symbols."""
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        if len(word) == 1:
            return word[0]
        ranks = self.bpe_ranks
        while len(word) > 1:
            best = min(get_pairs(word), key=lambda pair: ranks.get(pair, float("inf")))
            if best not in ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self.cache[token] = result
        return result

    def _encode_reference(self, text: str) -> list[int]:
        ids = []
        for piece in self.pat.findall(self.clean_fn(text)):
            token = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(token).split(" "))
        return ids

    # ---------------------------------------------------------------- public API
    @property
    def fast_encoder(self) -> FastEncoder:
        """The batched fast encoder (built on first use; shares this tokenizer's vocab)."""
        if self._fast_encoder is None:
            with self._fast_lock:
                if self._fast_encoder is None:
                    self._fast_encoder = FastEncoder(self)
        return self._fast_encoder

    def encode(self, text: str) -> list[int]:
        """Clean, pre-tokenise and BPE-encode ``text``; no start/end tokens, no truncation."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self.fast:
            return self.fast_encoder.encode(text)
        return self._encode_reference(text)

    def decode(self, tokens: Iterable[int]) -> str:
        """Ids -> text; word ends (``</w>``) become spaces, invalid UTF-8 becomes U+FFFD."""
        text = "".join(self.decoder[int(token)] for token in tokens)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: Union[str, list[str]], context_length: Optional[int] = None) -> torch.LongTensor:
        """Tokenize to a ``(len(texts), context_length)`` long tensor, zero padded.

        Each row is ``<start_of_text> ids <end_of_text>``; rows too long are cut to
        ``context_length`` and their last kept id is overwritten with ``<end_of_text>``.
        """
        _check_context_length(context_length)
        if not (self.fast and type(texts) is list):
            texts = _as_text_list(texts)  # (the fast encoder names a bad list item itself)
        # Quirk kept from 3.3: 0 falls back to the instance default.
        context_length = context_length or self.context_length
        if not context_length:
            raise AssertionError("Please set a valid context length")
        if self.reduction_fn is not None:
            texts = _as_text_list(texts)
            return self.reduction_fn(
                texts,
                context_length=context_length,
                sot_token_id=self.sot_token_id,
                eot_token_id=self.eot_token_id,
                encode_fn=self.encode,
            )
        if self.fast:
            flat, lengths = self.fast_encoder.encode_batch(texts)
            return torch.from_numpy(
                fill_rows(flat, lengths, context_length, self.sot_token_id, self.eot_token_id)
            )
        return self._call_reference(texts, context_length)

    def _call_reference(self, texts: list[str], context_length: int) -> torch.LongTensor:
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            tokens = [self.sot_token_id] + self._encode_reference(text) + [self.eot_token_id]
            if len(tokens) > context_length:
                tokens = tokens[:context_length]
                tokens[-1] = self.eot_token_id
            result[i, : len(tokens)] = torch.tensor(tokens)
        return result


_tokenizer = SimpleTokenizer()


def decode(output_ids: torch.Tensor) -> str:
    """Decode a 1-D tensor of ids with the default tokenizer (padding 0 decodes to ``!``)."""
    return _tokenizer.decode(np.asarray(output_ids.cpu()).tolist())


def tokenize(texts: Union[str, list[str]], context_length: int = DEFAULT_CONTEXT_LENGTH) -> torch.LongTensor:
    """Tokenize with the default ``SimpleTokenizer``; returns ``(N, context_length)`` int64 ids."""
    return _tokenizer(texts, context_length)
