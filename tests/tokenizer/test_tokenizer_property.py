"""Property tests: the fast path gives exactly the reference path's ids on random unicode, and the
ftfy "no-op" set used by the fast cleaning really is a no-op for ftfy and html.unescape."""

import html

import ftfy
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from open_clip.tokenizer import SimpleTokenizer
from open_clip.tokenizer_clean import basic_clean, is_clean_noop
from open_clip.tokenizer_fast import FastEncoder, fill_rows

FAST = {mode: SimpleTokenizer(clean=mode, fast=True) for mode in ("lower", "whitespace", "canonicalize")}
SLOW = {mode: SimpleTokenizer(clean=mode, fast=False) for mode in ("lower", "whitespace", "canonicalize")}

_PIECES = [
    "a", "A", "dog", "Dog", "'s", "'T", "'", "<start_of_text>", "<END_OF_TEXT>", "</w>", "&amp;", "&amp;amp;",
    "&lt;", "&#39;", "&eacute;", "<b>", "\n", "\r\n", "\r", "\t", " ", "\xa0", "\u200b", "\u3000", "\x0b",
    "\x1c", "\x1f", "\x7f", "\x85", "\x00", "\x01", "\x1b[31m", "\u2028", "\ufeff", "é", "e\u0301", "İ", "ß",
    "Σ", "ς", "ǅ", "ﬁ", "ＡＢＣ", "１２", "Ã©", "â€™", "’", "“", "😀", "👩\u200d👩\u200d👧", "🇫🇷", "\u0301",
    "\u05d0\u05d1", "\u0627\u0644", "\u202e", "日本語", "한국어", "Ⅻ", "²", "٣", "...", "!!!", "2024", "-",
    "_", "{", "}", "\\", "\ud800", "K", "ſ",
]

fragments = st.one_of(
    st.sampled_from(_PIECES),
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="ascii"), max_size=20),
    st.text(alphabet=st.characters(categories=("Mn", "Me", "Cf", "Cc", "Zs", "So", "Sk", "Nd", "No", "Lm", "Lo")),
            max_size=8),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "!", "é", "😀", " ", "ab", "1", "\u0301"]),
              st.integers(1, 300)),
)
texts = st.lists(fragments, max_size=8).map("".join)


def _check(mode, batch, context_length):
    expected = SLOW[mode](batch, context_length)
    assert torch.equal(FAST[mode](batch, context_length), expected)  # warm caches
    cold = FastEncoder(FAST[mode])  # empty caches, same vocabulary
    rows = fill_rows(*cold.encode_batch(batch), context_length, 49406, 49407)
    assert torch.equal(torch.from_numpy(rows), expected)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(texts, max_size=5), context_length=st.sampled_from([77, 16, 5, 2, 1]))
def test_fast_equals_reference_lower(batch, context_length):
    _check("lower", batch, context_length)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(texts, min_size=1, max_size=4), mode=st.sampled_from(["whitespace", "canonicalize"]))
def test_fast_equals_reference_other_modes(batch, mode):
    _check(mode, batch, 77)


@settings(max_examples=150, deadline=None)
@given(text=texts)
def test_encode_equal(text):
    assert FAST["lower"].encode(text) == SLOW["lower"].encode(text)


_NOOP_ALPHABET = st.sampled_from([chr(c) for c in range(0x20, 0x7F) if c != 0x26] + ["\t", "\n", "\x0c"])


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=_NOOP_ALPHABET, max_size=60))
def test_noop_set_is_left_alone_by_ftfy(text):
    assert is_clean_noop(text)
    assert ftfy.fix_text(text) == text
    assert html.unescape(text) == text
    assert basic_clean(text) == text.strip()


@pytest.mark.parametrize("code", range(128))
def test_noop_set_membership_per_ascii_char(code):
    """Every ASCII character outside the no-op set is one ftfy/unescape may change (or '&')."""
    ch = chr(code)
    if is_clean_noop(ch):
        assert ftfy.fix_text(f"a{ch}b") == f"a{ch}b" and html.unescape(f"a{ch}b") == f"a{ch}b"
    else:
        assert ch in "&\r\x0b\x1b" or code < 0x20 or code == 0x7F
