"""One-folder models: the writer records every setting the weights depend on; `local-dir:` loads
model, transform and tokenizer with no network access at all; loading is strict."""

import json
import socket

import pytest
import torch
from export_models import build, caption_lines, image_inputs, register, save_weights, text_inputs
from PIL import Image
from safetensors.torch import load_file, save_file

import open_clip
from open_clip.checkpoint import CheckpointError
from open_clip.export import ExportError, export_folder, load_source, save_model_folder, source_from_model
from open_clip.export.tokenizer_json import build_clip_tokenizer


def test_socket_guard_blocks_network(no_network):
    with pytest.raises(AssertionError, match="network access attempted"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(AssertionError, match="network access attempted"):
        socket.getaddrinfo("huggingface.co", 443)


def test_folder_round_trip_offline(tmp_path, fixtures_dir, no_network):
    model, cfg = build("export-vit-quickgelu", tmp_path)
    weights = save_weights(model, tmp_path / "w.safetensors")
    out = export_folder("export-vit-quickgelu", weights, tmp_path / "folder", force_context_length=16)
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    config = json.loads((out / "open_clip_config.json").read_text())
    model_cfg, preprocess_cfg = config["model_cfg"], config["preprocess_cfg"]
    # every setting the weights depend on is written out, including the forced one
    assert model_cfg["quick_gelu"] is True and model_cfg["vision_cfg"]["image_size"] == 32
    assert model_cfg["text_cfg"]["context_length"] == 16
    assert set(preprocess_cfg) == {"size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"}

    original, _, original_transform = open_clip.create_model_and_transforms(
        "export-vit-quickgelu", pretrained=weights, force_context_length=16)
    loaded, _, transform = open_clip.create_model_and_transforms(f"local-dir:{out}")
    original.eval(), loaded.eval()
    assert loaded.context_length == 16
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images, text = image_inputs(original), text_inputs(original)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), original.encode_image(images))
        assert torch.equal(loaded.encode_text(text), original.encode_text(text))
    image = Image.open(fixtures_dir / "images" / "chelsea.png")
    assert torch.equal(transform(image), original_transform(image))
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    assert torch.equal(tokenizer(caption_lines()[:20]), open_clip.get_tokenizer("export-vit-quickgelu",
                                                                              context_length=16)(caption_lines()[:20]))


def test_folder_with_hf_tokenizer_offline(tmp_path, no_network):
    """Hugging Face tokenizers travel as files in the folder and load from it, offline."""
    model, cfg = build("export-vit-quickgelu", tmp_path)
    hf_dir = tmp_path / "hf_tokenizer"
    hf_dir.mkdir()
    build_clip_tokenizer(open_clip.tokenizer.SimpleTokenizer(), 20).save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<start_of_text>",
        "eos_token": "<end_of_text>", "pad_token": "<end_of_text>"}))
    hf_tokenizer = open_clip.tokenizer.HFTokenizer(str(hf_dir), context_length=20)
    cfg = {**cfg, "text_cfg": {**cfg["text_cfg"], "hf_tokenizer_name": "my-org/my-tokenizer"}}
    out = save_model_folder(source_from_model(model, cfg, hf_tokenizer), tmp_path / "folder")
    assert (out / "tokenizer.json").is_file()
    loaded = open_clip.get_tokenizer(f"local-dir:{out}")
    assert isinstance(loaded, open_clip.tokenizer.HFTokenizer)
    texts = caption_lines()[:20]
    assert torch.equal(loaded(texts), hf_tokenizer(texts))


@pytest.mark.parametrize("tamper, message", [
    (lambda sd: sd.pop("visual.proj"), r"missing keys 1: visual\.proj"),
    (lambda sd: sd.__setitem__("visual.extra", torch.zeros(3)), r"unexpected keys 1: visual\.extra"),
    (lambda sd: sd.__setitem__("ln_final.weight", torch.ones(7)), r"shape mismatch for 'ln_final\.weight'"),
])
def test_folder_loading_is_strict(tmp_path, tamper, message):
    model, cfg = build("export-vit-quickgelu", tmp_path)
    out = save_model_folder(source_from_model(model, cfg, None), tmp_path / "folder")
    weights = out / "open_clip_model.safetensors"
    state_dict = load_file(str(weights))
    tamper(state_dict)
    save_file(state_dict, str(weights))
    with pytest.raises(CheckpointError, match=message):
        open_clip.create_model(f"local-dir:{out}")


def test_timm_tower_with_forced_size_is_refused(tmp_path):
    register("export-sl-timm", tmp_path)
    with pytest.raises(ExportError, match="timm image tower resized with force_image_size"):
        load_source("export-sl-timm", force_image_size=48)


def test_quick_gelu_and_preprocessing_follow_the_pretrained_tag(tmp_path, monkeypatch):
    """Weights trained with QuickGELU get it in the folder even when the architecture config lacks it."""
    from open_clip import pretrained

    model, cfg = build("export-vit-gelu", tmp_path)
    assert not cfg.get("quick_gelu")
    weights = save_weights(model, tmp_path / "w.safetensors")
    tag = {"file": weights, "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    monkeypatch.setitem(pretrained._PRETRAINED, "export-vit-gelu", {"mytag": tag})
    out = export_folder("export-vit-gelu", "mytag", tmp_path / "folder")
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["quick_gelu"] is True
    assert config["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5] and config["preprocess_cfg"]["std"] == [0.25] * 3
    loaded = open_clip.create_model(f"local-dir:{out}").eval()
    assert type(loaded.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"
    reference = open_clip.create_model("export-vit-gelu", pretrained="mytag", force_quick_gelu=True).eval()
    images = image_inputs(model)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), reference.encode_image(images))


def test_folder_with_hf_text_tower_builds_offline(tmp_path):
    """A Hugging Face text tower's transformers config travels in the folder: the folder builds
    with the original model name gone and no network."""
    transformers = pytest.importorskip("transformers")
    hub_like = tmp_path / "tiny-roberta"  # stands in for a Hub id: removed before loading
    transformers.RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=40,
                               pad_token_id=1).save_pretrained(hub_like)
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                           "head_width": 16},
           "text_cfg": {"hf_model_name": str(hub_like), "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear",
                        "hf_model_pretrained": False}}
    from open_clip.models.clip import CustomTextCLIP

    torch.manual_seed(0)
    model = CustomTextCLIP(**cfg).eval()
    preprocess = {"size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    out = save_model_folder(source_from_model(model, cfg, preprocess_cfg=preprocess, name="tiny-roberta-clip"),
                            tmp_path / "folder")
    assert (out / "hf_text" / "config.json").is_file()
    import shutil

    shutil.rmtree(hub_like)

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    import socket as socket_module

    with pytest.MonkeyPatch.context() as m:
        m.setattr(socket_module, "getaddrinfo", refuse)
        m.setattr(socket_module.socket, "connect", refuse)
        m.setenv("HF_HUB_OFFLINE", "1")
        loaded = open_clip.create_model(f"local-dir:{out}").eval()
    ids = torch.randint(2, 99, (3, 10))
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(ids), model.encode_text(ids))
