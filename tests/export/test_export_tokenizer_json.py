"""tokenizer.json: the portable tokenizers file gives SimpleTokenizer's ids on real text; the few
texts it cannot handle are exactly the documented ones; unsupported settings are refused."""

import json

import pytest
from export_models import caption_lines, outside_tokenizer_json

from open_clip.export.tokenizer_json import build_clip_tokenizer, unsupported_reason, write_portable_tokenizer
from open_clip.tokenizer import SimpleTokenizer

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def clip_tokenizer():
    return SimpleTokenizer()


def test_fixture_texts_give_our_ids(clip_tokenizer, fixtures_dir):
    """The 3.3 golden ids (3000 texts x 2 context lengths) through the tokenizers library."""
    rows = [json.loads(line) for line in (fixtures_dir / "tokenizer.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if "ids" in r]
    hf = {n: build_clip_tokenizer(clip_tokenizer, n) for n in {r["context_length"] for r in rows}}
    mismatches = []
    for n, tokenizer in hf.items():
        group = [r for r in rows if r["context_length"] == n]
        for row, encoding in zip(group, tokenizer.encode_batch([r["text"] for r in group])):
            if encoding.ids != row["ids"] + [0] * (n - len(row["ids"])):
                mismatches.append(row["text"])
    assert len(rows) == 6000
    assert all(outside_tokenizer_json(t) for t in mismatches), [t for t in mismatches if not outside_tokenizer_json(t)]
    assert len(mismatches) <= 4  # mojibake + glued special token, at two context lengths


def test_real_captions_give_our_ids(clip_tokenizer, tmp_path):
    lines = caption_lines()
    info = write_portable_tokenizer(clip_tokenizer, tmp_path, 77)
    assert info["file"] == "tokenizer.json" and info["pad_id"] == 0 and info["eot_id"] == 49407
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))  # what a deployment loads
    ours = clip_tokenizer(lines, 77).tolist()
    theirs = [e.ids for e in hf.encode_batch(lines)]
    wrong = [line for line, a, b in zip(lines, ours, theirs) if a != b and not outside_tokenizer_json(line)]
    assert not wrong
    # the sample holds the cases ftfy's tables handle: curly quotes, BOM, control characters, HTML entities
    assert any("\u2019" in line for line in lines) and any("&" in line for line in lines)


@pytest.mark.parametrize("text", [
    "ＦＵＬＬＷＩＤＴＨ text", "\ufeffBOM at the start", "curly \u2018quotes\u2019 and \u201cdouble\u201d",
    "ligature \ufb01sh", "ctrl\x1f\x7fchars", "caf&eacute; &amp;amp; &lt;b&gt;", "line\u2028sep\ttab",
    "x" * 300, "",
])
def test_cleaning_cases(clip_tokenizer, text):
    hf = build_clip_tokenizer(clip_tokenizer, 16)
    assert hf.encode(text).ids == clip_tokenizer([text], 16)[0].tolist()


def test_unsupported_settings_are_named():
    assert "clean='whitespace'" in unsupported_reason(SimpleTokenizer(clean="whitespace"))
    assert "reduction mask" in unsupported_reason(SimpleTokenizer(reduction_mask="simple"))
    assert unsupported_reason(SimpleTokenizer()) == ""
    with pytest.raises(ValueError, match="clean='canonicalize'"):
        build_clip_tokenizer(SimpleTokenizer(clean="canonicalize"), 77)
    with pytest.raises(ValueError, match="at least 2"):
        build_clip_tokenizer(SimpleTokenizer(), 1)


def test_additional_special_tokens(tmp_path):
    tokenizer = SimpleTokenizer(additional_special_tokens=["<mask>"])
    hf = build_clip_tokenizer(tokenizer, 12)
    text = "a <mask> on the table"
    assert hf.encode(text).ids == tokenizer([text], 12)[0].tolist()
    assert tokenizer.encoder["<mask>"] in hf.encode(text).ids
