"""Reduction masks (spec 03 §9), checked against naive re-implementations of each strategy."""

import random

import pytest
import torch

from open_clip.tokenizer import (
    SimpleTokenizer,
    get_reduction_mask_fn,
    random_mask_tokenize,
    simple_mask_tokenize,
    syntax_mask_tokenize,
)

SOT, EOT = 49406, 49407
TOK = SimpleTokenizer()
LONG = "the quick brown fox jumps over the lazy dog while seven small birds sing loudly today"
SHORT = "a dog"


def _row(ids, context_length):
    return [SOT] + ids + [EOT] + [0] * (context_length - len(ids) - 2)


def _rng_state():
    return torch.get_rng_state().clone(), random.getstate()


def _same_state(a, b):
    return torch.equal(a[0], b[0]) and a[1] == b[1]


@pytest.mark.parametrize("kind", ["simple", "random", "shuffle"])
def test_no_randomness_when_text_fits(kind):
    fn = get_reduction_mask_fn(kind)
    before = _rng_state()
    out = fn([SHORT, ""], context_length=10, sot_token_id=SOT, eot_token_id=EOT, encode_fn=TOK.encode)
    assert _same_state(before, _rng_state())
    assert out.tolist() == [_row(TOK.encode(SHORT), 10), _row([], 10)]


def test_simple_keeps_a_contiguous_window():
    ids = TOK.encode(LONG)
    k = 6
    random.seed(3)
    out = simple_mask_tokenize([LONG], k + 2, SOT, EOT, TOK.encode)
    random.seed(3)
    start = random.randint(0, len(ids) - k)
    assert out.tolist() == [[SOT] + ids[start : start + k] + [EOT]]


@pytest.mark.parametrize("shuffle", [False, True])
def test_random_and_shuffle_match_naive_reference(shuffle):
    ids = TOK.encode(LONG)
    k = 8
    torch.manual_seed(5)
    out = random_mask_tokenize([LONG], k + 2, SOT, EOT, TOK.encode, shuffle=shuffle)
    torch.manual_seed(5)
    chosen = torch.randperm(len(ids))[:k].tolist()
    if not shuffle:
        chosen.sort()
    assert out.tolist() == [[SOT] + [ids[i] for i in chosen] + [EOT]]


def test_tokenizer_with_reduction_mask():
    tok = SimpleTokenizer(reduction_mask="random")
    torch.manual_seed(0)
    out = tok([LONG, SHORT], context_length=8)
    ids = TOK.encode(LONG)
    torch.manual_seed(0)
    chosen = sorted(torch.randperm(len(ids))[:6].tolist())
    assert out.tolist() == [[SOT] + [ids[i] for i in chosen] + [EOT], _row(TOK.encode(SHORT), 8)]


def _toy_tagger(text):
    tags = []
    for word in text.split():
        if word.endswith("s"):
            tags.append((word, "NNS"))
        elif word.endswith("ly"):
            tags.append((word, "RB"))
        elif word.endswith("ed") or word in ("jumps", "sing"):
            tags.append((word, "VBD"))
        elif word in ("quick", "brown", "lazy", "small"):
            tags.append((word, "JJ"))
        else:
            tags.append((word, "DT"))
    return tags


def _naive_syntax(text, context_length):
    tagged = _toy_tagger(text)
    rank = {"N": 1, "J": 2, "V": 3}
    order = sorted(range(len(tagged)), key=lambda i: rank.get(tagged[i][1][0], 4) if tagged[i][1][:2] in
                   ("NN", "JJ", "VB") else 4)
    words = [tagged[i][0] for i in sorted(order[: context_length - 2])]
    ids = [SOT] + TOK.encode(" ".join(words)) + [EOT]
    if len(ids) > context_length:
        ids = ids[:context_length]
        ids[-1] = EOT
    return ids + [0] * (context_length - len(ids))


@pytest.mark.parametrize("context_length", [4, 7, 12, 40])
def test_syntax_with_injected_tagger(context_length):
    texts = ["birds sing loudly over quick brown dogs", "a lazy cat", ""]
    out = syntax_mask_tokenize(texts, context_length, SOT, EOT, TOK.encode, tagger=_toy_tagger)
    assert out.tolist() == [_naive_syntax(t, context_length) for t in texts]
    fn = get_reduction_mask_fn("syntax", tagger=_toy_tagger)
    assert torch.equal(fn(texts, context_length=context_length, sot_token_id=SOT, eot_token_id=EOT,
                          encode_fn=TOK.encode), out)


def test_syntax_without_nltk_names_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_nltk(name, *args, **kwargs):
        if name == "nltk":
            raise ImportError("No module named 'nltk'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nltk)
    with pytest.raises(ImportError, match="pip install nltk"):
        syntax_mask_tokenize(["a dog"], 8, SOT, EOT, TOK.encode)


def test_unknown_strategy():
    with pytest.raises(AssertionError, match="bogus"):
        get_reduction_mask_fn("bogus")
    with pytest.raises(AssertionError):
        SimpleTokenizer(reduction_mask="bogus")


def test_syntax_with_missing_nltk_data_names_the_resources(monkeypatch):
    import sys
    import types

    import open_clip.tokenizer_masks as tm

    downloads = []

    def missing(*args, **kwargs):
        raise LookupError("Resource not found")

    fake = types.SimpleNamespace(
        data=types.SimpleNamespace(find=missing),
        download=lambda name, quiet=False: downloads.append(name) or False,
        word_tokenize=missing,
        pos_tag=missing,
    )
    monkeypatch.setitem(sys.modules, "nltk", fake)
    monkeypatch.setattr(tm, "_nltk_ready", False)
    with pytest.raises(LookupError, match="punkt_tab.*averaged_perceptron_tagger_eng"):
        syntax_mask_tokenize(["a dog"], 8, SOT, EOT, TOK.encode)
    assert {"punkt_tab", "averaged_perceptron_tagger_eng"} <= set(downloads)  # one attempt, as 3.3
