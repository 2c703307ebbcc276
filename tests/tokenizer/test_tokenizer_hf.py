"""HFTokenizer and SigLipTokenizer on tiny tokenizers built locally (never from a hub)."""

import sys

import pytest
import torch

pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from open_clip.tokenizer import HFTokenizer, SigLipTokenizer  # noqa: E402

WORDS = ["hello", "world", "Hello", "a", "b", "c", "d", "e", "f", "g", "its", "it", "'", "s", ",", "!"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]"]
VOCAB = {t: i for i, t in enumerate(SPECIALS + WORDS)}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", VOCAB["[CLS]"]), ("[SEP]", VOCAB["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        bos_token="[BOS]", eos_token="[EOS]",
    )
    path = tmp_path_factory.mktemp("tiny_hf")
    fast.save_pretrained(path)
    return path


def _ids(words):
    return [VOCAB.get(w, VOCAB["[UNK]"]) for w in words]


def _pad(ids, n, pad=VOCAB["[PAD]"]):
    return ids + [pad] * (n - len(ids))


def test_standard_mode(tiny_dir):
    tok = HFTokenizer(str(tiny_dir), context_length=8)
    out = tok(["Hello   world", "a b c d e f g", "hello"])
    cls, sep = VOCAB["[CLS]"], VOCAB["[SEP]"]
    assert out.dtype == torch.long and out.shape == (3, 8)
    assert out.tolist() == [
        _pad([cls] + _ids(["Hello", "world"]) + [sep], 8),  # 'whitespace' clean keeps case
        [cls] + _ids(["a", "b", "c", "d", "e", "f"]) + [sep],  # truncated to fit the specials
        _pad([cls] + _ids(["hello"]) + [sep], 8),
    ]
    assert tok("a", context_length=4).tolist() == [[cls, VOCAB["a"], sep, VOCAB["[PAD]"]]]


def test_clean_modes_and_strip_sep(tiny_dir):
    tok = HFTokenizer(tiny_dir, context_length=6, clean="canonicalize", strip_sep_token=True)
    out = tok("Hello, World!")
    assert out.tolist() == [[VOCAB["[CLS]"]] + _ids(["hello", "world"]) + [0, VOCAB["[PAD]"], VOCAB["[PAD]"]]]
    lower = HFTokenizer(tiny_dir, context_length=6, clean="lower")
    assert lower("HELLO")[0, 1].item() == VOCAB["hello"]


def test_clips_mode(tiny_dir):
    tok = HFTokenizer(tiny_dir, context_length=7, tokenizer_mode="clips")
    bos, eos, pad, cls = (VOCAB[t] for t in ("[BOS]", "[EOS]", "[PAD]", "[CLS]"))
    assert tok(["a b", "a b c d e f g"]).tolist() == [
        [bos] + _ids(["a", "b"]) + [eos, pad, pad, cls],
        [bos] + _ids(["a", "b", "c", "d"]) + [eos, cls],
    ]


def test_context_length_language_and_save(tiny_dir, tmp_path):
    tok = HFTokenizer(tiny_dir, context_length=None)
    with pytest.raises(AssertionError, match="valid context length"):
        tok("a")
    assert tok("a", context_length=3).shape == (1, 3)
    with pytest.warns(UserWarning, match="Cannot set language"):
        tok.set_language("fr")
    tok.save_pretrained(tmp_path / "saved")
    again = HFTokenizer(tmp_path / "saved", context_length=5)
    assert torch.equal(again("hello world"), HFTokenizer(tiny_dir, context_length=5)("hello world"))
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        again(["a", None])


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install libreclip\[hf\]"):
        HFTokenizer("anything")


@pytest.fixture(scope="module")
def tiny_spm(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    path = tmp_path_factory.mktemp("spm")
    corpus = path / "corpus.txt"
    corpus.write_text("\n".join(["hello world", "a photo of a dog", "a cat on a mat", "the quick brown fox"] * 50))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(path / "tiny"), vocab_size=27, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    return path / "tiny.model"


def test_siglip_tokenizer_from_local_file(tiny_spm):
    tok = SigLipTokenizer(str(tiny_spm), context_length=12)
    out = tok(["Hello, World!", "hello world"])
    assert out.shape == (2, 12) and torch.equal(out[0], out[1])  # canonicalised
    row = out[0].tolist()
    eos = row.index(1)
    assert eos > 0 and all(t == 1 for t in row[eos:])  # eos then pad, both id 1 for T5 vocabularies
    assert tok.tokenizer.pad_token_id == 1 and tok.tokenizer.eos_token_id == 1
    assert tok(["hello world"] * 3, context_length=4).shape == (3, 4)
    assert set(SigLipTokenizer.VOCAB_FILES) == {"c4-en", "mc4", "gemma"}


def test_siglip_gemma_variant_from_local_file(tiny_spm, tmp_path):
    import shutil

    path = tmp_path / "gemma_tiny.model"
    shutil.copy(tiny_spm, path)
    tok = SigLipTokenizer(str(path), context_length=10)
    assert tok.tokenizer.pad_token_id == 0 and tok.tokenizer.eos_token_id == 1
    row = tok("hello world")[0].tolist()
    eos = row.index(1)
    assert eos > 0 and row[eos + 1 :] == [0] * (9 - eos)  # right padding with id 0
