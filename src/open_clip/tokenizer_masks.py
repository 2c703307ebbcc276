"""Token "reduction masks" of OpenCLIP 3.3: ways to fit a long text into ``context_length``.

Each strategy takes ``(texts, context_length, sot_token_id, eot_token_id, encode_fn)`` and returns
a ``(len(texts), context_length)`` long tensor: ``sot, kept ids, eot`` then zeros.
``simple`` keeps a random contiguous window (Python ``random``), ``random`` keeps a random subset in
order and ``shuffle`` a random subset in permutation order (global torch RNG); no randomness is used
when the text already fits. ``syntax`` keeps words by part of speech (nouns, adjectives, verbs,
others) using an NLTK tagger, or any injected ``tagger(text) -> [(word, tag), ...]``.
"""

import random
from collections.abc import Callable, Sequence
from functools import partial
from typing import Optional

import numpy as np
import torch

__all__ = [
    "random_mask_tokenize",
    "simple_mask_tokenize",
    "syntax_mask_tokenize",
    "get_reduction_mask_fn",
    "nltk_tagger",
]

Tagger = Callable[[str], Sequence[tuple]]
_NLTK_RESOURCES = {
    # resource path for nltk.data.find -> download name
    "tokenizers/punkt": "punkt",
    "tokenizers/punkt_tab": "punkt_tab",
    "taggers/averaged_perceptron_tagger": "averaged_perceptron_tagger",
    "taggers/averaged_perceptron_tagger_eng": "averaged_perceptron_tagger_eng",
}
_nltk_ready = False


def _rows_to_tensor(rows: list, context_length: int) -> torch.LongTensor:
    result = torch.zeros(len(rows), context_length, dtype=torch.long)
    for i, row in enumerate(rows):
        result[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return result


def random_mask_tokenize(
    texts: list[str],
    context_length: int,
    sot_token_id: int,
    eot_token_id: int,
    encode_fn: Callable[[str], list[int]],
    shuffle: bool = False,
) -> torch.LongTensor:
    """Keep ``context_length-2`` randomly chosen ids (``torch.randperm``), in order unless shuffle."""
    keep = context_length - 2
    rows = []
    for text in texts:
        ids = torch.tensor(encode_fn(text), dtype=torch.long)
        if len(ids) > keep:
            chosen = torch.randperm(len(ids))[:keep]
            if not shuffle:
                chosen = chosen.msort()
            ids = ids[chosen]
        rows.append([sot_token_id] + ids.tolist() + [eot_token_id])
    return _rows_to_tensor(rows, context_length)


def simple_mask_tokenize(
    texts: list[str],
    context_length: int,
    sot_token_id: int,
    eot_token_id: int,
    encode_fn: Callable[[str], list[int]],
) -> torch.LongTensor:
    """Keep a random contiguous window of ``context_length-2`` ids (``random.randint``)."""
    keep = context_length - 2
    rows = []
    for text in texts:
        ids = encode_fn(text)
        if len(ids) > keep:
            start = random.randint(0, len(ids) - keep)
            ids = ids[start : start + keep]
        rows.append([sot_token_id] + list(ids) + [eot_token_id])
    return _rows_to_tensor(rows, context_length)


def _ensure_nltk():
    """Import nltk and make sure its tokenizer/tagger data exist (one download attempt)."""
    global _nltk_ready
    try:
        import nltk
    except ImportError as e:
        raise ImportError(
            "reduction_mask='syntax' needs NLTK: `pip install nltk`, then "
            "`python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng`"
        ) from e
    if not _nltk_ready:
        missing = [name for path, name in _NLTK_RESOURCES.items() if not _nltk_has(nltk, path)]
        for name in missing:
            nltk.download(name, quiet=True)  # 3.3 downloads on first use; fails quietly offline
        _nltk_ready = True
    return nltk


def _nltk_has(nltk, path: str) -> bool:
    try:
        nltk.data.find(path)
    except LookupError:
        return False
    return True


def nltk_tagger(text: str) -> list[tuple]:
    """``nltk.pos_tag(nltk.word_tokenize(text))`` with a clear error when data are missing."""
    nltk = _ensure_nltk()
    try:
        return nltk.pos_tag(nltk.word_tokenize(text))
    except LookupError as e:
        raise LookupError(
            "reduction_mask='syntax' needs the NLTK data 'punkt_tab' and "
            "'averaged_perceptron_tagger_eng' (older NLTK: 'punkt', 'averaged_perceptron_tagger'); "
            "install them with `python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng`"
        ) from e


def _tag_priority(tag: str) -> int:
    if tag.startswith("NN"):
        return 1
    if tag.startswith("JJ"):
        return 2
    if tag.startswith("VB"):
        return 3
    return 4


def syntax_mask_tokenize(
    texts: list[str],
    context_length: int,
    sot_token_id: int,
    eot_token_id: int,
    encode_fn: Callable[[str], list[int]],
    tagger: Optional[Tagger] = None,
) -> torch.LongTensor:
    """Keep the ``context_length-2`` highest-priority words (NN > JJ > VB > rest), in text order,
    then encode them like ``SimpleTokenizer.__call__`` (truncating with ``eot``)."""
    tagger = tagger or nltk_tagger
    reduced = []
    for text in texts:
        tagged = list(tagger(text))
        priorities = np.array([_tag_priority(tag) for _, tag in tagged], dtype=np.int64)
        # numpy's default (non-stable) argsort, as 3.3; ties may order differently on long inputs.
        chosen = sorted(np.argsort(priorities)[: context_length - 2].tolist())
        reduced.append(" ".join(str(tagged[i][0]) for i in chosen))
    rows = []
    for text in reduced:
        ids = [sot_token_id] + encode_fn(text) + [eot_token_id]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = eot_token_id
        rows.append(ids)
    return _rows_to_tensor(rows, context_length)


_STRATEGIES = {
    "simple": simple_mask_tokenize,
    "random": random_mask_tokenize,
    "shuffle": partial(random_mask_tokenize, shuffle=True),
    "syntax": syntax_mask_tokenize,
}


def get_reduction_mask_fn(type: str, tagger: Optional[Tagger] = None) -> Callable:
    """Strategy for ``'simple'``, ``'random'``, ``'shuffle'`` or ``'syntax'`` (optional tagger)."""
    if type not in _STRATEGIES:
        raise AssertionError(f"Unknown reduction mask {type!r}; valid: {sorted(_STRATEGIES)}")
    if type == "syntax" and tagger is not None:
        return partial(syntax_mask_tokenize, tagger=tagger)
    return _STRATEGIES[type]
