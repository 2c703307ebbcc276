"""transformers conversion: CLIPModel / SiglipModel parity, processor files, open_clip ->
transformers -> open_clip round trips, offline Hub lookups and refusals."""

import numpy as np
import pytest
import torch
from export_models import (
    build,
    caption_lines,
    image_inputs,
    outside_tokenizer_json,
    register_tiny_timm_siglip,
    text_inputs,
)
from PIL import Image

import open_clip
from open_clip.export import ExportError, convert_from_hf, export_hf_from_source, source_from_model
from open_clip.export.hf_export import hf_features
from open_clip.export.hf_siglip import find_timm_siglip

transformers = pytest.importorskip("transformers")


def _export(name, tmp_path, tokenizer="auto"):
    model, cfg = build(name, tmp_path)
    tokenizer = open_clip.get_tokenizer(name) if tokenizer == "auto" else tokenizer
    result = export_hf_from_source(source_from_model(model, cfg, tokenizer, name=name), tmp_path / "hf")
    return model, cfg, result


def _assert_same_features(ours, theirs, model):
    images, text = image_inputs(model), text_inputs(model)
    with torch.no_grad():
        image_ref, text_ref = ours.encode_image(images, normalize=False), ours.encode_text(text, normalize=False)
    image_hf, text_hf = hf_features(theirs, images, text)
    assert image_ref.abs().max() > 1e-2 and text_ref.abs().max() > 1e-2
    torch.testing.assert_close(image_hf, image_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(text_hf, text_ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["export-vit-quickgelu", "export-vit-eos"])
def test_clip_parity_and_round_trip(name, tmp_path, no_network):
    model, cfg, result = _export(name, tmp_path)
    assert result.model_class == "CLIPModel" and max(result.max_abs_diff.values()) <= 1e-4
    hf_model, info = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    _assert_same_features(model, hf_model.eval(), model)

    back = convert_from_hf(tmp_path / "hf", tmp_path / "back")
    restored = open_clip.create_model(f"local-dir:{back.output_dir}").eval()
    assert restored.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    images, text = image_inputs(model), text_inputs(model)
    with torch.no_grad():
        assert torch.equal(restored.encode_image(images), model.encode_image(images))
        assert torch.equal(restored.encode_text(text), model.encode_text(text))
    # the built-in BPE is recognised, so the folder needs no tokenizer files
    assert isinstance(open_clip.get_tokenizer(f"local-dir:{back.output_dir}"), open_clip.tokenizer.SimpleTokenizer)


def test_clip_processor_tokenizes_and_preprocesses_like_us(tmp_path, fixtures_dir):
    _, _, _ = _export("export-vit-quickgelu", tmp_path)
    processor = transformers.CLIPProcessor.from_pretrained(str(tmp_path / "hf"), backend="pil")
    texts = [t for t in caption_lines()[:200] if not outside_tokenizer_json(t)]
    ours = open_clip.get_tokenizer("export-vit-quickgelu")(texts)
    theirs = processor(text=texts, padding="max_length", max_length=20, truncation=True, return_tensors="pt").input_ids
    # identical up to the (last) end token; transformers pads with <end_of_text> (it needs a pad token)
    positions = torch.arange(ours.shape[1])[None].expand_as(ours)
    last = torch.where(ours != 0, positions, 0).max(-1).values
    assert torch.equal(torch.where(positions <= last[:, None], theirs, 0), ours)
    assert torch.equal(torch.where(positions > last[:, None], theirs, 49407), torch.full_like(theirs, 49407))

    _, _, transform = open_clip.create_model_and_transforms("export-vit-quickgelu")
    for image_name in ("astronaut.png", "camera.png", "chelsea.png", "logo.png", "hubble_deep_field.jpg"):
        image = Image.open(fixtures_dir / "images" / image_name)
        pixels = processor(images=image, return_tensors="pt").pixel_values[0]
        np.testing.assert_allclose(pixels.numpy(), transform(image).numpy(), atol=1e-5, err_msg=image_name)
    default = transformers.CLIPProcessor.from_pretrained(str(tmp_path / "hf"))  # torchvision backend
    image = Image.open(fixtures_dir / "images" / "chelsea.png")
    assert (default(images=image, return_tensors="pt").pixel_values[0] - transform(image)).abs().max() < 0.02


def test_siglip_parity_and_round_trip(tmp_path, no_network):
    model, cfg, result = _export("export-sl-timm", tmp_path)
    assert result.model_class == "SiglipModel"
    hf_model, info = transformers.SiglipModel.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    _assert_same_features(model, hf_model.eval(), model)
    assert torch.allclose(hf_model.logit_bias.reshape(()), model.logit_bias.reshape(()))
    assert isinstance(transformers.AutoProcessor.from_pretrained(str(tmp_path / "hf")), transformers.SiglipProcessor)

    back = convert_from_hf(tmp_path / "hf", tmp_path / "back")
    assert back.model_cfg["vision_cfg"]["timm_model_name"] == cfg["vision_cfg"]["timm_model_name"]
    restored = open_clip.create_model(f"local-dir:{back.output_dir}").eval()
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


@pytest.mark.parametrize("name, features", [
    ("export-resnet", ["ModifiedResNet image tower"]),
    ("export-coca", ["CoCa"]),
    ("export-vit-options", ["non-square image", "attentional_pool"]),
    ("export-custom-text", ["pool_type='avg'", "no_ln_pre", "no_causal_mask", "pool_type='last'", "proj_bias"]),
])
def test_refusals_name_the_feature(name, features, tmp_path):
    model, cfg = build(name, tmp_path)
    with pytest.raises(ExportError, match="cannot represent this model") as info:
        export_hf_from_source(source_from_model(model, cfg, open_clip.get_tokenizer(name)), tmp_path / "hf")
    for feature in features:
        assert feature in str(info.value)
    assert not (tmp_path / "hf").exists()  # refused before writing anything


def test_custom_blocks_and_layerscale_are_refused(tmp_path):
    model, cfg = build("export-vit-quickgelu", tmp_path)
    cfg = {**cfg, "vision_cfg": {**cfg["vision_cfg"], "ls_init_value": 0.1},
           "text_cfg": {**cfg["text_cfg"], "qk_norm": True}}
    open_clip.factory._MODEL_CONFIGS["export-ls"] = cfg
    model = open_clip.create_model("export-ls")
    with pytest.raises(ExportError) as info:
        export_hf_from_source(source_from_model(model, cfg, None), tmp_path / "hf")
    assert "vision LayerScale (ls_init_value)" in str(info.value) and "text custom attention blocks" in str(info.value)


def test_processor_refusal(tmp_path):
    model, cfg = build("export-vit-quickgelu", tmp_path)
    preprocess = {**model.visual.preprocess_cfg, "resize_mode": "longest"}
    source = source_from_model(model, cfg, open_clip.get_tokenizer("export-vit-quickgelu"), preprocess_cfg=preprocess)
    with pytest.raises(ExportError, match="resize_mode='longest'"):
        export_hf_from_source(source, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    source = source_from_model(model, cfg, open_clip.tokenizer.SimpleTokenizer(clean="whitespace"))
    with pytest.raises(ExportError, match="tokenizer cannot be written for transformers: clean='whitespace'"):
        export_hf_from_source(source, tmp_path / "hf")


def test_from_hf_is_offline_and_checks_the_type(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        convert_from_hf("libreclip-tests/not-a-cached-repo", tmp_path / "out")
    config = transformers.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=8)
    transformers.BertModel(config).save_pretrained(str(tmp_path / "bert"))
    with pytest.raises(ExportError, match="model_type='bert'"):
        convert_from_hf(tmp_path / "bert", tmp_path / "out")


def test_from_hf_siglip_needs_a_matching_timm_vit(tmp_path):
    """Real SigLIP checkpoints use tanh GELU, which timm's SigLIP ViTs cannot reproduce: named, not approximated."""
    vision = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
              "image_size": 32, "patch_size": 8, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
    with pytest.raises(ExportError, match="tanh-approximated GELU"):
        find_timm_siglip(vision)
    register_tiny_timm_siglip()
    assert find_timm_siglip({**vision, "hidden_act": "gelu"}) == "vit_libreclip_test_patch8_siglip_32"
