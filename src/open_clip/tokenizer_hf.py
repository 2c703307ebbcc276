"""Tokenizers backed by Hugging Face ``transformers``: ``HFTokenizer`` (any AutoTokenizer, incl.
the CLIPS mode) and ``SigLipTokenizer`` (T5 / Gemma sentencepiece vocabularies of big_vision).

``transformers`` is an optional extra (``pip install libreclip[hf]``), imported on first use.
"""

import os
import tempfile
import warnings
from numbers import Integral
from typing import Optional, Union

import torch

from .tokenizer_clean import basic_clean, canonicalize_text, get_clean_fn

__all__ = ["HFTokenizer", "SigLipTokenizer"]

_DEFAULT_CONTEXT_LENGTH = 77


def _import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "This tokenizer needs the Hugging Face `transformers` package: pip install libreclip[hf]"
        ) from e
    return transformers


def _check_context_length(value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 0):
        raise ValueError(f"context_length must be a non-negative integer or None, got {value!r}")


def _as_list(texts) -> list:
    if isinstance(texts, str):
        return [texts]
    if texts is None:
        raise TypeError("texts must be a str or a sequence of str, got NoneType")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return texts


class HFTokenizer:
    """Wraps ``transformers.AutoTokenizer.from_pretrained(tokenizer_name)`` with OpenCLIP's cleaning,
    fixed-length padding/truncation and optional sep-token stripping or CLIPS layout."""

    def __init__(
        self,
        tokenizer_name: Union[str, os.PathLike],
        context_length: Optional[int] = _DEFAULT_CONTEXT_LENGTH,
        clean: str = "whitespace",
        strip_sep_token: bool = False,
        language: Optional[str] = None,
        cache_dir: Optional[str] = None,
        tokenizer_mode: Optional[str] = None,
        **kwargs,
    ):
        transformers = _import_transformers()
        self.tokenizer_mode = tokenizer_mode or ""
        self.context_length = context_length
        self.clean_fn = get_clean_fn(clean)
        self.strip_sep_token = strip_sep_token
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_name, cache_dir=cache_dir, **kwargs)
        set_lang_fn = getattr(self.tokenizer, "set_src_lang_special_tokens", None)
        self.set_lang_fn = set_lang_fn if callable(set_lang_fn) else None
        if language is not None:
            self.set_language(language)

    def save_pretrained(self, dest: Union[str, os.PathLike]) -> None:
        """Save the wrapped HF tokenizer files to ``dest``."""
        self.tokenizer.save_pretrained(dest)

    def set_language(self, src_lang: str) -> None:
        """Set the source language (NLLB-style tokenizers); warns if unsupported."""
        if self.set_lang_fn is not None:
            self.set_lang_fn(src_lang)
        else:
            warnings.warn("Cannot set language for the tokenizer.", stacklevel=2)

    def __call__(self, texts: Union[str, list[str]], context_length: Optional[int] = None) -> torch.Tensor:
        """Clean and tokenize to ``(len(texts), context_length)`` ids (HF special tokens and pad id)."""
        _check_context_length(context_length)
        texts = _as_list(texts)
        context_length = context_length or self.context_length
        if not context_length:
            raise AssertionError("Please set a valid context length in class init or call.")
        texts = [self.clean_fn(text) for text in texts]
        if self.tokenizer_mode == "clips":
            return self._clips_tokenize(texts, context_length)
        input_ids = self.tokenizer(
            texts,
            return_tensors="pt",
            max_length=context_length,
            padding="max_length",
            truncation=True,
        ).input_ids
        sep = self.tokenizer.sep_token_id
        if self.strip_sep_token and sep is not None:
            # 3.3 writes 0 here, whatever the tokenizer's pad id is (kept).
            input_ids = torch.where(input_ids == sep, torch.zeros_like(input_ids), input_ids)
        return input_ids

    def _clips_tokenize(self, texts: list[str], context_length: int) -> torch.Tensor:
        """CLIPS layout: ``bos body eos pad... cls`` with cls always at the last position."""
        tok = self.tokenizer
        encoded = tok(texts, add_special_tokens=False, padding=False, truncation=False)["input_ids"]
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, body in enumerate(encoded):
            row = [tok.bos_token_id] + list(body[: context_length - 3]) + [tok.eos_token_id]
            row += [tok.pad_token_id] * (context_length - 1 - len(row))
            row.append(tok.cls_token_id)
            result[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return result


class SigLipTokenizer:
    """big_vision SigLIP tokenizers: ``'c4-en'`` / ``'mc4'`` (T5 sentencepiece) or ``'gemma'``;
    any other name is taken as a path to a sentencepiece model file."""

    VOCAB_FILES = {
        # english, vocab_size=32_000
        "c4-en": "http://storage.googleapis.com/t5-data/vocabs/cc_en.32000/sentencepiece.model",
        # used in multilingual models (mT5, PaLI), vocab_size=250_000
        "mc4": "http://storage.googleapis.com/t5-data/vocabs/mc4.250000.100extra/sentencepiece.model",
        # used in SigLIP2 models, vocab_size=256000
        "gemma": "http://storage.googleapis.com/big_vision/gemma_tokenizer.model",
    }

    def __init__(self, tokenizer_name: str, context_length: Optional[int] = 64):
        transformers = _import_transformers()
        if tokenizer_name in self.VOCAB_FILES:
            vocab_file = self._download(self.VOCAB_FILES[tokenizer_name])
        else:
            vocab_file = tokenizer_name
        if "gemma" in tokenizer_name:
            self.tokenizer = transformers.GemmaTokenizerFast(
                vocab_file=vocab_file, padding_side="right", add_bos_token=False, add_eos_token=True,
                legacy=False,
            )
            self.tokenizer.pad_token_id = 0
        else:
            self.tokenizer = transformers.T5TokenizerFast(vocab_file=vocab_file, extra_ids=0, legacy=False)
            self.tokenizer.pad_token_id = 1
        self.tokenizer.eos_token_id = 1
        self.context_length = context_length

    @staticmethod
    def _download(url: str) -> str:
        import fsspec

        fd, path = tempfile.mkstemp(suffix=".model")
        with os.fdopen(fd, "wb") as dst, fsspec.open(url, "rb") as src:
            dst.write(src.read())
        return path

    def save_pretrained(self, dest: Union[str, os.PathLike]) -> None:
        """Save the wrapped HF tokenizer files to ``dest``."""
        self.tokenizer.save_pretrained(dest)

    def __call__(self, texts: Union[str, list[str]], context_length: Optional[int] = None) -> torch.Tensor:
        """Canonicalise and tokenize to ``(len(texts), context_length)`` ids."""
        _check_context_length(context_length)
        texts = _as_list(texts)
        context_length = context_length or self.context_length
        if not context_length:
            raise AssertionError("Please set a valid context length in class init or call.")
        texts = [canonicalize_text(basic_clean(text)) for text in texts]
        return self.tokenizer(
            texts,
            return_tensors="pt",
            max_length=context_length,
            padding="max_length",
            truncation=True,
        ).input_ids
