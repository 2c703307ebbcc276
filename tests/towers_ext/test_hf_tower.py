"""HFTextEncoder on tiny local transformers configs (no hub access): poolers against naive
masked reductions, projection layouts, the ``text.*`` layout of a custom-text CLIP, locking,
gradient checkpointing and the offline error."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from open_clip.hf_model import _POOLERS, HFTextEncoder  # noqa: E402

E = 16
WIDTH = 32


def _tiny_configs() -> dict:
    common = dict(vocab_size=100, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=40)
    return {
        "roberta": transformers.RobertaConfig(pad_token_id=1, **common),
        "xlm-roberta": transformers.XLMRobertaConfig(pad_token_id=1, **common),
        "bert": transformers.BertConfig(pad_token_id=0, **common),
        "mt5": transformers.MT5Config(vocab_size=100, d_model=WIDTH, d_kv=16, d_ff=64, num_layers=2,
                                      num_heads=2, pad_token_id=0),
        "m2m_100": transformers.M2M100Config(vocab_size=100, d_model=WIDTH, encoder_layers=2, decoder_layers=1,
                                             encoder_attention_heads=2, decoder_attention_heads=2,
                                             encoder_ffn_dim=64, decoder_ffn_dim=64,
                                             max_position_embeddings=40, pad_token_id=1),
    }


CONFIGS = _tiny_configs()


def _ids(pad: int) -> torch.Tensor:
    ids = torch.tensor([[3, 5, 6, 7, 4, 0, 0], [3, 9, 4, 0, 0, 0, 0]])
    ids[ids == 0] = pad
    return ids


def _encoder(arch: str, **kwargs) -> HFTextEncoder:
    torch.manual_seed(0)
    return HFTextEncoder("tiny-" + arch, kwargs.pop("output_dim", E), config=CONFIGS[arch], **kwargs).eval()


def test_pooler_registry_names():
    assert sorted(_POOLERS) == ["cls_last_hidden_state_pooler", "cls_pooler", "max_pooler", "mean_pooler"]


@pytest.mark.parametrize("arch, default", [("roberta", "MeanPooler"), ("xlm-roberta", "MeanPooler"),
                                           ("mt5", "MeanPooler"), ("bert", "ClsPooler"),
                                           ("m2m_100", "ClsPooler")])
def test_default_pooler_per_arch(arch, default):
    assert type(_encoder(arch, proj_type="linear").pooler).__name__ == default


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("pooler", ["mean_pooler", "max_pooler", "cls_last_hidden_state_pooler"])
def test_poolers_match_naive_reductions(arch, pooler):
    model = _encoder(arch, pooler_type=pooler, proj_type="none")
    ids = _ids(CONFIGS[arch].pad_token_id)
    with torch.no_grad():
        hidden = model.transformer(input_ids=ids, attention_mask=(ids != CONFIGS[arch].pad_token_id).long())
        hidden = hidden.last_hidden_state
        out = model(ids)
    for row in range(ids.shape[0]):
        valid = hidden[row][ids[row] != CONFIGS[arch].pad_token_id]  # (n_valid, W)
        expected = {"mean_pooler": valid.mean(0), "max_pooler": valid.max(0).values,
                    "cls_last_hidden_state_pooler": hidden[row, 0]}[pooler]
        torch.testing.assert_close(out[row], expected)


def test_cls_pooler_uses_hf_pooler_output_when_present():
    model = _encoder("bert", pooler_type="cls_pooler", proj_type="none", output_tokens=True)
    assert any(k.startswith("transformer.pooler.") for k in model.state_dict())
    ids = _ids(0)
    with torch.no_grad():
        hf_out = model.transformer(input_ids=ids, attention_mask=(ids != 0).long())
        pooled, tokens = model(ids)
    torch.testing.assert_close(pooled, hf_out.pooler_output)
    torch.testing.assert_close(tokens, hf_out.last_hidden_state[:, 1:])  # CLS position dropped
    # other poolers build the model without the HF pooler layer and keep all tokens
    mean = _encoder("bert", pooler_type="mean_pooler", proj_type="none", output_tokens=True)
    assert not any(k.startswith("transformer.pooler.") for k in mean.state_dict())
    assert mean(ids)[1].shape == (2, ids.shape[1], WIDTH)


def test_cls_pooler_on_encoder_only_output_takes_position_zero():
    model = _encoder("m2m_100", pooler_type="cls_pooler", proj_type="none")
    ids = _ids(1)
    with torch.no_grad():
        hidden = model.transformer(input_ids=ids, attention_mask=(ids != 1).long()).last_hidden_state
        torch.testing.assert_close(model(ids), hidden[:, 0])


@pytest.mark.parametrize("proj_type, expected", [
    ("linear", {"proj.weight": (E, WIDTH)}),
    ("mlp", {"proj.0.weight": ((WIDTH + E) // 2, WIDTH), "proj.2.weight": (E, (WIDTH + E) // 2)}),
    ("none", {}),
])
def test_projection_layouts(proj_type, expected):
    model = _encoder("roberta", proj_type=proj_type)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("transformer.")}
    assert got == expected
    ids = _ids(1)
    with torch.no_grad():
        pooled = _POOLERS["mean_pooler"]()(model.transformer(input_ids=ids, attention_mask=(ids != 1).long()),
                                           (ids != 1).long())
        out = model(ids)
    if proj_type == "linear":
        torch.testing.assert_close(out, pooled @ model.proj.weight.T)
    elif proj_type == "mlp":
        hidden = nn.functional.gelu(pooled @ model.proj[0].weight.T)
        torch.testing.assert_close(out, hidden @ model.proj[2].weight.T)
    else:
        torch.testing.assert_close(out, pooled)


def test_projection_none_needs_matching_width():
    assert isinstance(_encoder("roberta", proj_type=None, output_dim=WIDTH).proj, nn.Identity)
    with pytest.raises(ValueError, match="hf_proj_type"):
        _encoder("roberta", proj_type=None, output_dim=E)
    with pytest.raises(ValueError, match="'conv'"):
        _encoder("roberta", proj_type="conv")
    with pytest.raises(ValueError, match="'sum_pooler'"):
        _encoder("roberta", pooler_type="sum_pooler")


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_transformer_keys_are_the_hf_model_keys(arch):
    model = _encoder(arch, proj_type="linear")
    config = CONFIGS[arch]
    if config.is_encoder_decoder:
        hf = transformers.AutoModel.from_config(config).encoder
    else:
        hf = transformers.AutoModel.from_config(config, add_pooling_layer=False)
    expected = [("transformer." + k, tuple(v.shape)) for k, v in hf.state_dict().items()]
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == expected + [("proj.weight", (E, WIDTH))]
    assert model.vocab_size == 100
    assert model.context_length == getattr(config, "max_position_embeddings", 0)


def test_build_from_local_dir_random_and_pretrained(tmp_path):
    torch.manual_seed(1)
    hf = transformers.AutoModel.from_config(CONFIGS["roberta"], add_pooling_layer=False)
    hf.save_pretrained(tmp_path)
    random_init = HFTextEncoder(str(tmp_path), E, proj_type="linear", pretrained=False)
    assert random_init.config.hidden_size == WIDTH
    loaded = HFTextEncoder(str(tmp_path), E, proj_type="linear", pretrained=True)
    for key, value in hf.state_dict().items():
        torch.testing.assert_close(loaded.transformer.state_dict()[key], value)
    assert not torch.equal(random_init.transformer.embeddings.word_embeddings.weight,
                           hf.embeddings.word_embeddings.weight)


def test_custom_text_clip_layout_with_local_roberta(tmp_path):
    """roberta-ViT-B-32 shape (HF text, mean pooler, mlp proj) with a tiny local roberta."""
    factory = pytest.importorskip("open_clip.factory")
    CONFIGS["roberta"].save_pretrained(tmp_path / "tiny-roberta")
    cfg = {
        "embed_dim": E,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"hf_model_name": str(tmp_path / "tiny-roberta"), "hf_pooler_type": "mean_pooler",
                     "hf_tokenizer_name": "unused"},
    }
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "tiny-roberta-ViT.json").write_text(json.dumps(cfg))
    factory.add_model_config(tmp_path / "cfgs")
    model = factory.create_model("tiny-roberta-ViT", pretrained_text=False)  # no HF weights
    assert type(model).__name__ == "CustomTextCLIP"
    hf = transformers.AutoModel.from_config(CONFIGS["roberta"], add_pooling_layer=False)
    text_keys = [k for k in model.state_dict() if k.startswith("text.")]
    hidden = (WIDTH + E) // 2
    expected = ["text.transformer." + k for k in hf.state_dict()] + ["text.proj.0.weight", "text.proj.2.weight"]
    assert text_keys == expected
    assert model.state_dict()["text.proj.0.weight"].shape == (hidden, WIDTH)
    ids = _ids(1)[:, :6]
    assert model.encode_text(ids).shape == (2, E)


def test_lock_all_and_layer_norm_option():
    model = _encoder("roberta", proj_type="linear")
    model.lock(0, freeze_layer_norm=True)
    assert not any(p.requires_grad for p in model.transformer.parameters())
    assert all(p.requires_grad for p in model.proj.parameters())
    model = _encoder("roberta", proj_type="linear")
    model.lock(0, freeze_layer_norm=False)
    for name, p in model.transformer.named_parameters():
        assert p.requires_grad == ("LayerNorm" in name.split(".")), name


@pytest.mark.parametrize("arch, layer_prefix, embed_prefix", [
    ("roberta", "encoder.layer.", "embeddings."), ("mt5", "block.", "embed_tokens.")])
def test_lock_keeps_last_layers_trainable(arch, layer_prefix, embed_prefix):
    model = _encoder(arch, proj_type="linear")
    model.lock(unlocked_layers=1)
    for name, p in model.transformer.named_parameters():
        if name.startswith(layer_prefix + "1."):
            assert p.requires_grad, name
        elif name.startswith(layer_prefix + "0.") or name.startswith(embed_prefix):
            assert not p.requires_grad, name
    model = _encoder(arch, proj_type="linear")
    model.lock(unlocked_layers=2)  # embeddings frozen, both layers trainable
    assert all(p.requires_grad for n, p in model.transformer.named_parameters() if n.startswith(layer_prefix))
    assert not any(p.requires_grad for n, p in model.transformer.named_parameters() if n.startswith(embed_prefix))


def test_lock_layers_unsupported_for_bert():
    with pytest.raises(KeyError):  # no layer attribute names for bert in hf_configs (3.3 quirk)
        _encoder("bert", proj_type="linear").lock(unlocked_layers=1)


def _checkpointing_on(hf_model) -> bool:
    # transformers >= 5 renamed the property (the old name warns)
    if hasattr(type(hf_model), "is_activation_checkpointing"):
        return hf_model.is_activation_checkpointing
    return hf_model.is_gradient_checkpointing


def test_grad_checkpointing_and_intermediates():
    model = _encoder("roberta", proj_type="linear")
    model.set_grad_checkpointing(True)
    assert _checkpointing_on(model.transformer)
    model.train()
    model(_ids(1)).sum().backward()
    model.set_grad_checkpointing(False)
    assert not _checkpointing_on(model.transformer)
    model.eval()
    out = model.forward_intermediates(_ids(1), indices=1)
    assert len(out["text_intermediates"]) == 1 and out["text_intermediates"][0].shape == (2, 7, WIDTH)
    torch.testing.assert_close(out["text_features"], model(_ids(1)))


def test_offline_missing_config_is_one_clear_line(tmp_path):
    script = (
        "from open_clip.hf_model import HFTextEncoder\n"
        "try:\n"
        "    HFTextEncoder('roberta-base', 16, pretrained=False)\n"
        "except OSError as e:\n"
        "    print(str(e))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert "\n" not in message and "'roberta-base'" in message and "HF_HUB_OFFLINE" in message
