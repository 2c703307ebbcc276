"""SimpleTokenizer: golden fixture (fast and reference paths), vocab facts, cleaning, regex quirks,
truncation, special tokens, decode, bad input. Expected values come from the golden fixture or
from OpenCLIP 3.3.0 (spec 03 §4-8, §24)."""

import hashlib
import json
import threading

import pytest
import torch

from open_clip.tokenizer import (
    DEFAULT_CONTEXT_LENGTH,
    SimpleTokenizer,
    bytes_to_unicode,
    decode,
    default_bpe,
    get_pairs,
    tokenize,
)


@pytest.fixture(scope="module")
def fixture_rows(request):
    from pathlib import Path

    path = Path(request.config.rootpath) / "tests" / "fixtures" / "tokenizer.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module", params=[True, False], ids=["fast", "slow"])
def tok(request):
    return SimpleTokenizer(fast=request.param)


def _strip_padding(row):
    ids = row.tolist()
    while ids and ids[-1] == 0:
        ids.pop()
    return ids


@pytest.mark.parametrize("context_length", [77, 16])
def test_golden_ids(tok, fixture_rows, context_length):
    rows = [r for r in fixture_rows if r.get("context_length") == context_length]
    assert len(rows) == 3000
    out = tok([r["text"] for r in rows], context_length=context_length)
    assert out.dtype == torch.long and out.shape == (3000, context_length)
    mismatches = [r["text"] for r, o in zip(rows, out) if _strip_padding(o) != r["ids"]]
    assert mismatches == []
    long_rows = out[out[:, -1] != 0]
    assert (long_rows[:, -1] == 49407).all()


def test_golden_encode_decode(tok, fixture_rows):
    rows = [r for r in fixture_rows if "encode" in r]
    assert len(rows) == 300
    for r in rows:
        assert tok.encode(r["text"]) == r["encode"], r["text"]
        assert tok.decode(r["encode"]) == r["decode"], r["text"]


def test_golden_rows_one_at_a_time(fixture_rows):
    """Batch composition must not matter: single-text calls give the fixture ids too."""
    tok = SimpleTokenizer()
    for r in fixture_rows[:6000:7]:
        if "ids" in r:
            assert _strip_padding(tok(r["text"], r["context_length"])[0]) == r["ids"]


def test_vocab_facts():
    tok = SimpleTokenizer()
    assert tok.vocab_size == 49408 and len(tok.encoder) == 49408
    assert (tok.sot_token_id, tok.eot_token_id, tok.all_special_ids) == (49406, 49407, [49406, 49407])
    spots = {0: "!", 1: '"', 93: "~", 94: "¡", 187: "ÿ", 188: "Ā", 255: "Ń", 256: "!</w>", 511: "Ń</w>",
             512: "in", 513: "th", 49405: "jekyll</w>", 49406: "<start_of_text>", 49407: "<end_of_text>"}
    for i, s in spots.items():
        assert tok.decoder[i] == s and tok.encoder[s] == i
    assert tok.context_length == DEFAULT_CONTEXT_LENGTH == 77


def test_packaged_vocab_is_byte_identical():
    with open(default_bpe(), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def test_byte_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert (table[0], table[32], table[127], table[160], table[173]) == ("Ā", "Ġ", "\u0121", "\u0142", "Ń")
    assert all(table[b] == chr(b) for b in list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256)))
    assert get_pairs(("a", "b", "c")) == {("a", "b"), ("b", "c")}


REFERENCE_IDS = [  # spec 03 §24 (measured on 3.3.0)
    ("a diagram", [320, 22697]),
    ("Hello World", [3306, 1002]),
    ("Hello, World!", [3306, 267, 1002, 256]),
    ("a photo of a dog.", [320, 1125, 539, 320, 1929, 269]),
    ("IT'S", [585, 568]),
    ("'sorry'", [568, 523, 913, 262]),
    ("2024", [273, 271, 273, 275]),
    ("naïve café", [1097, 35689, 563, 15304]),
    ("日本語", [39121, 44353, 34002, 508]),
    ("...!!!", [38351]),
    ("!", [256]),
    ("<start_of_text>hi", [49406, 1883]),
    ("", []),
    ("   \t\n ", []),
]


@pytest.mark.parametrize("text,ids", REFERENCE_IDS)
def test_reference_ids(tok, text, ids):
    assert tok.encode(text) == ids
    assert _strip_padding(tok(text)[0]) == [49406] + ids + [49407]


@pytest.mark.parametrize("fast", [True, False])
def test_clean_modes(fast):
    assert SimpleTokenizer(clean="whitespace", fast=fast).encode("Hello World") == [39, 2512, 54, 523, 730]
    assert SimpleTokenizer(clean="canonicalize", fast=fast).encode("IT'S") == [902]
    with pytest.raises(AssertionError, match=r"Invalid clean function \(bogus\)\."):
        SimpleTokenizer(clean="bogus")


@pytest.mark.parametrize("fast", [True, False])
def test_special_token_quirks(fast):
    tok = SimpleTokenizer(fast=fast)
    bang = tok.encode("!<start_of_text>")
    assert bang[:2] == [0, 283] and 49406 not in bang  # punctuation run swallows '<'
    assert tok.encode("ab<end_of_text>")[-1] == 49407
    assert tok.encode("<START_OF_TEXT>") == [49406]  # lower-cased first
    ws = SimpleTokenizer(clean="whitespace", fast=fast)
    assert 49406 not in ws.encode("<START_OF_TEXT>") and ws.encode("<start_of_text>") == [49406]


@pytest.mark.parametrize("fast", [True, False])
def test_additional_special_tokens(fast):
    tok = SimpleTokenizer(additional_special_tokens=["<mask>", "<pad>"], fast=fast)
    assert tok.vocab_size == 49410 and tok.all_special_ids == [49406, 49407, 49408, 49409]
    assert tok.encode("a <mask> b <pad>") == [320, 49408, 321, 49409]
    assert 49408 not in SimpleTokenizer(additional_special_tokens=["<PAD>"], fast=fast).encode("<PAD>")
    spaced = SimpleTokenizer(additional_special_tokens=["a b"], fast=fast)
    assert spaced.encode("a b c") == [64, 220, 321, 322]
    assert spaced.encode("a\t b  c") == [64, 220, 321, 322]  # whitespace is collapsed first
    with pytest.raises(KeyError):
        spaced.decode([49408])
    # 3.3 inserted specials into the regex unescaped; "[MASK]" must not become a character class.
    bracket = SimpleTokenizer(additional_special_tokens=["[mask]"], fast=fast)
    assert bracket.encode("k [mask]") == SimpleTokenizer(fast=fast).encode("k") + [49408]


def test_fast_matches_slow_with_special_tokens():
    texts = ["x<mask>y <MASK> a b c", "é <pad>, a\tb", "Kk ſs <Mask>", "dog dogs hotdog", "a  b"]
    for specials in (["<mask>", "<pad>"], ["dog"], ["a b"], ["K"], ["é"], ["Ã©"], ["[mask]", "(x)"]):
        fast = SimpleTokenizer(additional_special_tokens=specials, fast=True)
        slow = SimpleTokenizer(additional_special_tokens=specials, fast=False)
        for context_length in (77, 4):
            assert torch.equal(fast(texts, context_length), slow(texts, context_length)), specials


def test_truncation_edges(tok):
    assert tok("a diagram", context_length=3).tolist() == [[49406, 320, 49407]]
    assert tok("one two three four five", context_length=6).tolist() == [[49406, 637, 1237, 2097, 2721, 49407]]
    assert tok("a diagram", context_length=1).tolist() == [[49407]]
    assert tok("a diagram", context_length=2).tolist() == [[49406, 49407]]
    assert tok("a diagram", context_length=4).tolist() == [[49406, 320, 22697, 49407]]  # exact fit
    assert torch.equal(tok("a dog", context_length=0), tok("a dog"))  # 0 -> instance default
    assert tok([], context_length=5).shape == (0, 5)
    long = tok("word " * 5000, context_length=77)
    assert long.shape == (1, 77) and long[0, -1] == 49407 and (long[0, 1:-1] != 0).all()


def test_context_length_validation():
    tok = SimpleTokenizer()
    for bad in (-1, 2.5, "77", True):
        with pytest.raises(ValueError, match="context_length"):
            tok("a", context_length=bad)
        with pytest.raises(ValueError, match="context_length"):
            SimpleTokenizer(context_length=bad)
    unset = SimpleTokenizer(context_length=None)
    with pytest.raises(AssertionError, match="valid context length"):
        unset("a")
    assert unset("a", context_length=5).shape == (1, 5)


@pytest.mark.parametrize("fast", [True, False])
def test_bad_input(fast):
    tok = SimpleTokenizer(fast=fast)
    with pytest.raises(TypeError, match=r"texts\[1\].*int"):
        tok(["ok", 3])
    with pytest.raises(TypeError, match=r"texts\[2\].*NoneType"):
        tok(["ok", "fine", None])
    with pytest.raises(TypeError, match="NoneType"):
        tok(None)
    with pytest.raises(TypeError, match="bytes"):
        tok.encode(b"abc")
    assert tok("").tolist()[0][:3] == [49406, 49407, 0]
    assert torch.equal(tok(("a", "b")), tok(["a", "b"]))  # any sequence
    assert torch.equal(tok(t for t in ["a", "b"]), tok(["a", "b"]))


def test_decode():
    tok = SimpleTokenizer()
    assert tok.decode(tok.encode("a diagram")) == "a diagram "
    assert tok.decode([49406] + tok.encode("a diagram") + [49407]) == "<start_of_text>a diagram <end_of_text>"
    assert tok.decode([0, 0]) == "!!"
    assert tok.decode([tok.encoder["Ã"]]) == "\ufffd"  # a lone UTF-8 lead byte
    assert decode(tokenize("a dog")[0])[: len("<start_of_text>a dog <end_of_text>")] == (
        "<start_of_text>a dog <end_of_text>"
    )


def test_module_tokenize():
    out = tokenize(["a diagram", "a dog", "a cat"])
    assert out.dtype == torch.int64 and out.shape == (3, 77)
    assert out[:, :4].tolist() == [[49406, 320, 22697, 49407], [49406, 320, 1929, 49407], [49406, 320, 2368, 49407]]
    assert out[:, 4:].abs().sum() == 0


@pytest.mark.parametrize(
    "text",
    ["\x1f \x7f", "a\rb", "a\x0bb", "&amp;amp;amp;", "<b>\n&amp;amp;", "a\x01b", "x\x85y", "caf&eacute;",
     "\u2028z", "\x1b[31mred\x1b[0m", "don\u2019t", "ﬁne", "ＡＢＣ１２３", "&#1;", "&amp;#1;", "&#x01;x", "\x01"],
)
def test_fast_path_cleaning_edges(text):
    fast, slow = SimpleTokenizer(fast=True), SimpleTokenizer(fast=False)
    batch = ["plain text", text, "more plain"]
    assert torch.equal(fast(batch), slow(batch))
    assert fast.encode(text) == slow.encode(text)


def test_fast_cache_is_bounded_and_thread_safe(monkeypatch):
    import open_clip.tokenizer_fast as tf

    monkeypatch.setattr(tf, "_CACHE_LIMIT", 50)
    fast, slow = SimpleTokenizer(fast=True), SimpleTokenizer(fast=False)
    texts = [f"caption {i} of item{i % 37} dog.{i}" for i in range(400)]
    expected = slow(texts)
    errors = []

    def work(offset):
        try:
            for k in range(5):
                part = texts[(offset * 31 + k * 53) % 400:][:120]
                start = texts.index(part[0])
                assert torch.equal(fast(part), expected[start : start + len(part)])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(fast.fast_encoder._chunk_cache) <= 50 + 200


def test_fast_path_without_tokenizers_package(monkeypatch, fixture_rows):
    """Without the optional `tokenizers` package the fast path falls back to the reference BPE."""
    import open_clip.tokenizer_fast as tf

    monkeypatch.setattr(tf, "_rust_bpe_model", lambda *args: None)
    tok = SimpleTokenizer()
    assert tok.fast_encoder._rust is None
    rows = [r for r in fixture_rows if r.get("context_length") == 16][:500]
    out = tok([r["text"] for r in rows], context_length=16)
    assert [_strip_padding(o) for o in out] == [r["ids"] for r in rows]


@pytest.mark.slow
def test_rust_bpe_equals_reference_on_every_merge():
    """The `tokenizers` BPE model merges every vocabulary word exactly like the reference `bpe`."""
    tok = SimpleTokenizer()
    fe = tok.fast_encoder
    if fe._rust is None:
        pytest.skip("tokenizers not installed")
    words = sorted({(a + b).replace("</w>", "") for a, b in tok._merges} - {""})
    words = [w for w in words if len(w) > 1]
    from array import array

    expected = [array("i", [tok.encoder[s] for s in tok.bpe(w).split(" ")]).tobytes() for w in words]
    assert fe._bpe_many(words) == expected


@pytest.mark.parametrize("fast", [True, False])
def test_pickle_roundtrip(fast):
    """Tokenizers travel to DataLoader workers by pickle."""
    import copy
    import pickle

    tok = SimpleTokenizer(additional_special_tokens=["<mask>"], context_length=20, fast=fast)
    texts = ["a <mask> photo of a dog.", "naïve café 2024"]
    expected = tok(texts)
    clone = pickle.loads(pickle.dumps(tok))
    assert torch.equal(clone(texts), expected) and clone.vocab_size == 49409
    assert torch.equal(copy.deepcopy(tok)(texts), expected)
