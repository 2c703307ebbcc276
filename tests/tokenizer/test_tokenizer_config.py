"""get_tokenizer: config resolution rules of OpenCLIP 3.3 (spec 03 §13, spec 01 §7)."""

import json
import logging
from pathlib import Path

import pytest

import open_clip.tokenizer_config as tc
from open_clip import config_registry
from open_clip.tokenizer import SimpleTokenizer
from open_clip.tokenizer_config import get_tokenizer


class Recorder:
    """Stands in for HFTokenizer / SigLipTokenizer: records how it was built."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


@pytest.fixture
def record(monkeypatch):
    hf = type("HF", (Recorder,), {})
    siglip = type("SigLip", (Recorder,), {})
    monkeypatch.setattr(tc, "HFTokenizer", hf)
    monkeypatch.setattr(tc, "SigLipTokenizer", siglip)
    return hf, siglip


@pytest.mark.parametrize(
    "name,context_length", [("ViT-B-32", 77), ("coca_ViT-B-32", 76), ("RN50", 77), ("PE-Core-B-16", 32), ("", 77)]
)
def test_simple_tokenizer_models(name, context_length):
    tok = get_tokenizer(name)
    assert type(tok) is SimpleTokenizer and tok.context_length == context_length


def test_context_length_precedence():
    assert get_tokenizer("ViT-B-32", context_length=20).context_length == 20
    assert get_tokenizer("ViT-B-32", context_length=0).context_length == 0  # kept (3.3)
    assert get_tokenizer("no-such-model", context_length=0).context_length == 77  # `or` here
    assert get_tokenizer("no-such-model", context_length=9).context_length == 9
    assert get_tokenizer("ViT-B/32").context_length == 77  # no '/' cleaning: unknown name


def test_unknown_name_passes_kwargs():
    tok = get_tokenizer("no-such-model", clean="whitespace")
    assert type(tok) is SimpleTokenizer and tok.encode("Hello") == SimpleTokenizer(clean="whitespace").encode("Hello")


def test_hf_tokenizer_from_config(record):
    hf, _ = record
    tok = get_tokenizer("ViT-B-16-SigLIP", cache_dir="/tmp/c")
    assert type(tok) is hf
    assert tok.args == ("timm/ViT-B-16-SigLIP",)
    assert tok.kwargs == {"context_length": 64, "cache_dir": "/tmp/c", "tokenizer_mode": None, "clean": "canonicalize"}
    assert get_tokenizer("ViT-B-16-SigLIP", clean="lower").kwargs["clean"] == "lower"  # caller wins
    assert get_tokenizer("ViT-SO400M-14-SigLIP").kwargs["context_length"] == 16


def test_siglip_name_heuristic(record, monkeypatch):
    _, siglip = record
    text_cfg = {"context_length": 33, "tokenizer_kwargs": {"clean": "lower"}}
    for name, variant in [("my-SigLIP2-x", "gemma"), ("my-siglip-i18n", "mc4"), ("My-SigLIP", "c4-en")]:
        monkeypatch.setitem(config_registry._MODEL_CONFIGS, name, {"embed_dim": 8, "vision_cfg": {},
                                                                   "text_cfg": text_cfg})
        tok = get_tokenizer(name, cache_dir="/x", clean="whitespace")
        assert type(tok) is siglip and tok.args == (variant,) and tok.kwargs == {"context_length": 33}


def _write_local(tmp_path, text_cfg):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"text_cfg": text_cfg}}))
    return f"local-dir:{tmp_path}"


def test_local_dir(record, tmp_path):
    hf, _ = record
    tok = get_tokenizer(_write_local(tmp_path, {"hf_tokenizer_name": "org/tok", "context_length": 12}))
    assert type(tok) is hf and tok.args == (Path(tmp_path),) and tok.kwargs["context_length"] == 12
    simple = get_tokenizer(_write_local(tmp_path, {"context_length": 12}))
    assert type(simple) is SimpleTokenizer and simple.context_length == 12
    siglip_dir = tmp_path / "siglip"
    siglip_dir.mkdir()
    assert type(get_tokenizer(_write_local(siglip_dir, {}))) is SimpleTokenizer  # no name heuristic


def test_local_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="schema not found at"):
        get_tokenizer(f"local-dir:{tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="config file missing"):
        get_tokenizer(f"local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="Could not load valid config for 'local-dir:"):
        get_tokenizer(f"local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"no_model_cfg": {}}))
    with pytest.raises(ValueError, match="Could not load valid config"):
        get_tokenizer(f"local-dir:{tmp_path}")
    with pytest.raises(ValueError, match="Empty path specified after 'local-dir:' schema."):
        get_tokenizer("local-dir:")
    with pytest.raises(ValueError, match="Empty identifier specified after 'hf-hub:' schema."):
        get_tokenizer("hf-hub:")


def test_hf_hub(record, monkeypatch, caplog):
    hf, _ = record

    def offline(repo_id, cache_dir=None):
        raise OSError("offline")

    monkeypatch.setattr(config_registry, "_get_hf_config", offline)
    with caplog.at_level(logging.WARNING):
        tok = get_tokenizer("hf-hub:org/repo", context_length=5)
    assert type(tok) is hf and tok.args == ("org/repo",) and tok.kwargs["context_length"] == 5
    assert "org/repo" in caplog.text

    monkeypatch.setattr(config_registry, "_get_hf_config",
                        lambda repo_id, cache_dir=None: {"model_cfg": {"text_cfg": {"context_length": 40}}})
    tok = get_tokenizer("hf-hub:org/simple")
    assert type(tok) is SimpleTokenizer and tok.context_length == 40
    monkeypatch.setattr(config_registry, "_get_hf_config", lambda repo_id, cache_dir=None: {"model_cfg": {}})
    assert type(get_tokenizer("hf-hub:org/empty")) is hf


def test_local_dir_with_real_hf_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from open_clip.tokenizer import HFTokenizer

    vocab = {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(tmp_path)
    tok = get_tokenizer(_write_local(tmp_path, {"hf_tokenizer_name": "unused/name", "context_length": 4}))
    assert type(tok) is HFTokenizer
    assert tok(["hello world", "world x"]).tolist() == [[2, 3, 0, 0], [3, 1, 0, 0]]
