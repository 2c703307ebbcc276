"""End to end: save_for_hf -> Hub cache -> create_model_from_pretrained('hf-hub:...'), offline.

The model is the golden `vit_tok` fixture (weights and outputs computed by OpenCLIP 3.3), so the
round trip is checked both against the source model and against 3.3's numbers.
"""

import json
import pathlib

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from hub_cache import fill_hub_cache
from safetensors.torch import load_file

from open_clip import config_registry, pretrained
from open_clip.factory import create_model_from_pretrained
from open_clip.models.clip import CLIP, set_model_preprocess_cfg
from open_clip.push_to_hf_hub import save_for_hf
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
from open_clip.tokenizer_config import get_tokenizer

CASE = pathlib.Path(__file__).parents[1] / "fixtures" / "models" / "vit_tok"
CUSTOM_PP = {
    "size": (32, 32),
    "mode": "RGB",
    "mean": (0.25, 0.5, 0.75),
    "std": (0.2, 0.3, 0.4),
    "interpolation": "bilinear",
    "resize_mode": "squash",
    "fill_color": 0,
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # transformers asks the Hub client, which read the variable at import time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _config():
    return json.loads((CASE / "config.json").read_text())


def _source_model():
    model = CLIP(**_config()).eval()
    model.load_state_dict(load_file(str(CASE / "weights.safetensors")))
    set_model_preprocess_cfg(model, dict(CUSTOM_PP))
    return model


def _features(model):
    inputs = np.load(CASE / "inputs.npz")
    with torch.no_grad():
        return (
            model.encode_image(torch.from_numpy(inputs["images"])),
            model.encode_text(torch.from_numpy(inputs["text"]).long()),
        )


def _publish(tmp_path, repo_id, model, safe_serialization="both", commit=None, ref="main", config=None, tokenizer=None):
    export = tmp_path / f"export-{ref}"
    save_for_hf(model, tokenizer, config or _config(), export, safe_serialization=safe_serialization)
    files = {p.name: p for p in export.iterdir()}
    kwargs = {"commit": commit} if commit else {}
    # A model repo has no transformers config.json; the client's cache records that as a 404 marker.
    fill_hub_cache(tmp_path / "hub", repo_id, files, ref=ref, missing=["config.json"], **kwargs)
    return str(tmp_path / "hub")


@pytest.mark.parametrize("safe_serialization", ["both", False])
def test_round_trip_gives_identical_outputs_and_3p3_numbers(tmp_path, safe_serialization):
    source = _source_model()
    cache = _publish(tmp_path, "me/tiny", source, safe_serialization)
    model, preprocess = create_model_from_pretrained("hf-hub:me/tiny", cache_dir=cache)
    model.eval()
    for got, want in zip(_features(model), _features(source)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    golden = np.load(CASE / "outputs.npz")
    image, text = _features(model)
    np.testing.assert_allclose(image.numpy(), golden["image_features"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(text.numpy(), golden["text_features"], rtol=1e-4, atol=1e-5)


def test_custom_preprocessing_in_config_reaches_model_and_transform(tmp_path):
    cache = _publish(tmp_path, "me/tiny", _source_model())
    model, preprocess = create_model_from_pretrained("hf-hub:me/tiny", cache_dir=cache)
    pp = model.visual.preprocess_cfg
    assert tuple(pp["mean"]) == CUSTOM_PP["mean"] and tuple(pp["std"]) == CUSTOM_PP["std"]
    assert pp["interpolation"] == "bilinear" and pp["resize_mode"] == "squash"
    normalize = [t for t in preprocess.transforms if type(t).__name__ == "Normalize"][0]
    assert tuple(normalize.mean) == CUSTOM_PP["mean"] and tuple(normalize.std) == CUSTOM_PP["std"]


def test_revision_suffix_selects_snapshot(tmp_path):
    source = _source_model()
    _publish(tmp_path, "me/tiny", source)
    other = _source_model()
    with torch.no_grad():
        other.logit_scale.fill_(1.5)
    cache = _publish(tmp_path, "me/tiny", other, commit="f" * 40, ref="v2")
    main = create_model_from_pretrained("hf-hub:me/tiny", cache_dir=cache, return_transform=False)
    v2 = create_model_from_pretrained("hf-hub:me/tiny@v2", cache_dir=cache, return_transform=False)
    assert main.logit_scale.item() == pytest.approx(source.logit_scale.item())
    assert v2.logit_scale.item() == pytest.approx(1.5)


def test_offline_missing_repo_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError) as info:
        create_model_from_pretrained("hf-hub:me/absent", cache_dir=str(tmp_path))
    msg = str(info.value)
    assert "open_clip_config.json" in msg and "HF_HUB_OFFLINE" in msg and str(tmp_path) in msg


def test_registry_tag_preprocessing_overrides_config(tmp_path, monkeypatch):
    """A tag record's mean/std/interpolation/resize_mode win over the model config defaults."""
    monkeypatch.setitem(config_registry._MODEL_CONFIGS, "tiny-test", _config())
    record = {
        "url": "",
        "hf_hub": "me/tiny-weights/",
        "mean": (0.1, 0.2, 0.3),
        "std": (0.3, 0.2, 0.1),
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    monkeypatch.setitem(pretrained._PRETRAINED, "tiny-test", {"my_tag": record})
    weights = load_file(str(CASE / "weights.safetensors"))
    fill_hub_cache(tmp_path, "me/tiny-weights", {"open_clip_model.safetensors": weights})
    model, _ = create_model_from_pretrained("tiny-test", pretrained="MY-TAG", cache_dir=str(tmp_path))
    pp = model.visual.preprocess_cfg
    assert (tuple(pp["mean"]), tuple(pp["std"])) == (record["mean"], record["std"])
    assert (pp["interpolation"], pp["resize_mode"]) == ("bilinear", "squash")
    assert torch.equal(model.visual.proj.detach(), weights["visual.proj"])


TEXTS = ["a photo of a cat", "A Photo, of a CAT!  of"]


def test_hub_config_tokenizer_settings_reach_get_tokenizer(tmp_path):
    config = _config()
    config["text_cfg"]["tokenizer_kwargs"] = {"clean": "canonicalize"}
    cache = _publish(tmp_path, "me/tiny", _source_model(), config=config)
    tokenizer = get_tokenizer("hf-hub:me/tiny", cache_dir=cache)
    assert type(tokenizer) is SimpleTokenizer and tokenizer.context_length == 20
    expected = SimpleTokenizer(context_length=20, clean="canonicalize")(TEXTS)
    assert torch.equal(tokenizer(TEXTS), expected)
    assert not torch.equal(expected, SimpleTokenizer(context_length=20)(TEXTS))  # the setting matters


def _tiny_hf_tokenizer_dir(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "photo": 3, "of": 4, "cat": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    folder = tmp_path / "tiny-hf-tokenizer"
    fast.save_pretrained(str(folder))
    return folder


def test_published_hf_tokenizer_and_model_load_back_from_the_same_repo(tmp_path):
    """push_pretrained_to_hf_hub(hf_tokenizer_self=True) layout: the repo is its own HF tokenizer."""
    config = _config()
    config["text_cfg"]["hf_tokenizer_name"] = "me/tiny-hf"
    tokenizer = HFTokenizer(str(_tiny_hf_tokenizer_dir(tmp_path)), context_length=20)
    source = _source_model()
    cache = _publish(tmp_path, "me/tiny-hf", source, config=config, tokenizer=tokenizer)

    loaded_tokenizer = get_tokenizer("hf-hub:me/tiny-hf", cache_dir=cache)
    assert isinstance(loaded_tokenizer, HFTokenizer) and loaded_tokenizer.context_length == 20
    ids = loaded_tokenizer(TEXTS)
    assert ids.shape == (2, 20)
    assert ids[0, :5].tolist() == [2, 3, 4, 2, 5] and ids[0, 5:].eq(0).all()  # naive word lookup
    assert ids[1, :8].tolist() == [1, 1, 1, 4, 2, 1, 1, 4]  # case-sensitive vocab: A, Photo, ',', CAT, ! unknown

    model = create_model_from_pretrained("hf-hub:me/tiny-hf", cache_dir=cache, return_transform=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), source.encode_text(ids), rtol=0, atol=0)
