"""hf_configs.arch_dict (spec 01 §12 table) and convert.py's foreign-format detection."""

import pytest
import torch

from open_clip.convert import convert_state_dict, is_mobileclip_original, load_big_vision_weights
from open_clip.hf_configs import arch_dict

# Spec 01 §12, column by column: context_length, vocab_size, width, heads, layers, layer_attr,
# token_embeddings_attr, pooler (None = no such key).
SPEC = {
    "roberta": ("max_position_embeddings", "vocab_size", "hidden_size", "num_attention_heads",
                "num_hidden_layers", "layer", "embeddings", "mean_pooler"),
    "xlm-roberta": ("max_position_embeddings", "vocab_size", "hidden_size", "num_attention_heads",
                    "num_hidden_layers", "layer", "embeddings", "mean_pooler"),
    "mt5": ("", "vocab_size", "d_model", "num_heads", "num_layers", "block", "embed_tokens", "mean_pooler"),
    "bert": ("max_position_embeddings", "vocab_size", "hidden_size", "num_attention_heads",
             "num_hidden_layers", None, None, "cls_pooler"),
    "m2m_100": ("max_position_embeddings", "vocab_size", "d_model", "encoder_attention_heads",
                "encoder_layers", None, None, "cls_pooler"),
}  # fmt: skip
KEYS = ("context_length", "vocab_size", "width", "heads", "layers", "layer_attr", "token_embeddings_attr")


@pytest.mark.parametrize("model_type", list(SPEC))
def test_arch_dict_matches_spec(model_type):
    *names, pooler = SPEC[model_type]
    entry = arch_dict[model_type]
    assert entry["pooler"] == pooler
    expected = {k: v for k, v in zip(KEYS, names) if v is not None}
    assert entry["config_names"] == expected


def test_arch_dict_has_exactly_the_spec_types():
    assert set(arch_dict) == set(SPEC)
    with pytest.raises(KeyError):
        arch_dict["bert"]["config_names"]["layer_attr"]  # locking bert layers fails, as in 3.3


def test_convert_state_dict_passes_openclip_layout_through():
    sd = {"visual.proj": torch.ones(2, 2), "logit_scale": torch.tensor(1.0)}
    assert convert_state_dict(torch.nn.Linear(1, 1), sd) is sd
    assert not is_mobileclip_original(sd)


@pytest.mark.parametrize(
    "key",
    ["image_encoder.model.patch_embed.0.rbr_conv.0.conv.weight", "image_encoder.model.patch_emb.0.block.conv.weight"],
)
def test_apple_mobileclip_originals_are_recognised_and_refused(key):
    sd = {key: torch.ones(1)}
    assert is_mobileclip_original(sd)
    with pytest.raises(NotImplementedError, match="MobileCLIP"):
        convert_state_dict(torch.nn.Linear(1, 1), sd)


def test_big_vision_files_name_the_alternative(tmp_path):
    with pytest.raises(NotImplementedError, match="webli"):
        load_big_vision_weights(torch.nn.Linear(1, 1), str(tmp_path / "siglip.npz"))
