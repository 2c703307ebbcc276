"""Towers loaded with the golden 3.3 weights (tests/fixtures/models/<case>) reproduce 3.3's
image / text features. Whole-model parity is the factory's test; this checks the towers alone."""

import json
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from open_clip.models.layers import QuickGELU
from open_clip.models.modified_resnet import ModifiedResNet
from open_clip.models.text_transformer import TextTransformer
from open_clip.models.vision_transformer import VisionTransformer

ROOT = pathlib.Path(__file__).parents[1] / "fixtures" / "models"
VIT_KEYS = (
    "ls_init_value",
    "attentional_pool",
    "attn_pooler_queries",
    "attn_pooler_heads",
    "no_ln_pre",
    "pool_type",
    "final_ln_after_pool",
    "output_tokens",
    "patch_dropout",
)
TEXT_KEYS = (
    "context_length",
    "vocab_size",
    "width",
    "heads",
    "layers",
    "ls_init_value",
    "embed_cls",
    "no_causal_mask",
    "pad_id",
    "eos_id",
    "pool_type",
    "proj_bias",
    "output_tokens",
)


def load_case(case: str):
    cfg = json.loads((ROOT / case / "config.json").read_text())
    weights = load_file(str(ROOT / case / "weights.safetensors"))
    inputs = np.load(ROOT / case / "inputs.npz")
    outputs = np.load(ROOT / case / "outputs.npz")
    return cfg, weights, inputs, outputs


def build_visual(cfg: dict) -> nn.Module:
    v, embed_dim = cfg["vision_cfg"], cfg["embed_dim"]
    if isinstance(v["layers"], list):
        heads = v["width"] * 32 // v["head_width"]
        return ModifiedResNet(v["layers"], embed_dim, heads, image_size=v["image_size"], width=v["width"])
    act = QuickGELU if cfg.get("quick_gelu") else nn.GELU
    kwargs = {k: v[k] for k in VIT_KEYS if k in v}
    heads = v["width"] // v["head_width"]
    mlp_ratio = v.get("mlp_ratio", 4.0)
    return VisionTransformer(
        v["image_size"], v["patch_size"], v["width"], v["layers"], heads, mlp_ratio,
        output_dim=embed_dim, act_layer=act, **kwargs,
    )  # fmt: skip


def build_text(cfg: dict) -> TextTransformer:
    t = cfg["text_cfg"]
    act = QuickGELU if cfg.get("quick_gelu") else nn.GELU
    return TextTransformer(output_dim=cfg["embed_dim"], act_layer=act, **{k: t[k] for k in TEXT_KEYS if k in t})


def first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize(
    "case",
    ["vit_tok", "vit_quickgelu", "vit_avgpool_lnafter", "vit_attnpool", "vit_layerscale_rect", "resnet", "coca"],
)
def test_visual_tower_matches_golden(case):
    cfg, weights, inputs, outputs = load_case(case)
    visual = build_visual(cfg)
    visual.load_state_dict({k[len("visual.") :]: v for k, v in weights.items() if k.startswith("visual.")})
    visual.eval()
    with torch.no_grad():
        feats = first(visual(torch.from_numpy(inputs["images"])))
    if "multimodal_cfg" in cfg:
        feats = F.normalize(feats, dim=-1)  # CoCa.encode_image normalizes by default
    np.testing.assert_allclose(feats.numpy(), outputs["image_features"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["text_variants", "text_embed_cls", "siglip_style", "coca"])
def test_custom_text_tower_matches_golden(case):
    cfg, weights, inputs, outputs = load_case(case)
    text = build_text(cfg)
    text.load_state_dict({k[len("text.") :]: v for k, v in weights.items() if k.startswith("text.")})
    text.eval()
    with torch.no_grad():
        feats = first(text(torch.from_numpy(inputs["text"]).long()))
    if "multimodal_cfg" in cfg:
        feats = F.normalize(feats, dim=-1)
    np.testing.assert_allclose(feats.numpy(), outputs["text_features"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("early_stop", [True, False])
@pytest.mark.parametrize("case", ["vit_tok", "vit_quickgelu", "vit_layerscale_rect", "resnet"])
def test_native_clip_text_params_in_text_tower(case, early_stop):
    """CLIP keeps the text modules at top level; the same tensors in a TextTransformer give 3.3's
    encode_text (this is the computation CLIP.encode_text reuses)."""
    cfg, weights, inputs, outputs = load_case(case)
    text = build_text(cfg)
    top_level = {k: v for k, v in weights.items() if not k.startswith("visual.") and not k.startswith("logit_")}
    text.load_state_dict(top_level)
    text.eval()
    text.early_stop = early_stop
    with torch.no_grad():
        feats = text(torch.from_numpy(inputs["text"]).long())
    np.testing.assert_allclose(feats.numpy(), outputs["text_features"], atol=1e-5, rtol=1e-4)
