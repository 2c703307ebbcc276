"""State-dict key names, order and shapes of towers built (on the meta device) from the shipped
model configs equal 3.3's layout dump (tests/fixtures/reference/state_dict_layouts.json)."""

import json
import pathlib
from functools import partial

import pytest
import torch
from torch import nn

from open_clip.models.layers import LayerNorm, QuickGELU
from open_clip.models.modified_resnet import ModifiedResNet
from open_clip.models.text_transformer import TextTransformer
from open_clip.models.vision_transformer import VisionTransformer

REPO = pathlib.Path(__file__).parents[2]
LAYOUTS = json.loads((REPO / "tests" / "fixtures" / "reference" / "state_dict_layouts.json").read_text())
CONFIGS = REPO / "src" / "open_clip" / "model_configs"

VIT_FIELDS = (
    "ls_init_value", "attentional_pool", "attn_pooler_queries", "attn_pooler_heads", "patch_dropout",
    "no_ln_pre", "pos_embed_type", "pool_type", "final_ln_after_pool", "output_tokens", "block_type",
    "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc",
)  # fmt: skip
TEXT_FIELDS = (
    "context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value", "embed_cls",
    "no_causal_mask", "pad_id", "eos_id", "pool_type", "proj_type", "proj_bias", "output_tokens", "block_type",
    "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc",
)  # fmt: skip


def act_norm(cfg: dict, quick_gelu: bool) -> dict:
    """Spec 02 §2: activation / norm class selection (fp32 build: plain LayerNorm)."""
    act = QuickGELU if quick_gelu else nn.GELU
    norm = LayerNorm
    if cfg.get("norm_kwargs"):
        norm = partial(norm, **cfg["norm_kwargs"])
    if cfg.get("act_kwargs") is not None:
        act = partial(act, **cfg["act_kwargs"])
    return dict(act_layer=act, norm_layer=norm)


def build_visual(model_cfg: dict) -> nn.Module:
    v, embed_dim = model_cfg["vision_cfg"], model_cfg["embed_dim"]
    if isinstance(v["layers"], (list, tuple)):
        heads = v["width"] * 32 // v.get("head_width", 64)
        return ModifiedResNet(v["layers"], embed_dim, heads, image_size=v.get("image_size", 224), width=v["width"])
    return VisionTransformer(
        v.get("image_size", 224), v.get("patch_size", 16), v.get("width", 768), v.get("layers", 12),
        v.get("width", 768) // v.get("head_width", 64), v.get("mlp_ratio", 4.0), output_dim=embed_dim,
        **{k: v[k] for k in VIT_FIELDS if k in v}, **act_norm(v, model_cfg.get("quick_gelu", False)),
    )  # fmt: skip


def build_text(model_cfg: dict) -> TextTransformer:
    t = model_cfg["text_cfg"]
    kwargs = {k: t[k] for k in TEXT_FIELDS if k in t}
    return TextTransformer(
        output_dim=model_cfg["embed_dim"], **kwargs, **act_norm(t, model_cfg.get("quick_gelu", False))
    )


def layout(module: nn.Module) -> list:
    return [(k, list(v.shape)) for k, v in module.state_dict().items()]


def native_cases():
    vis, txt = [], []
    for name, entry in LAYOUTS.items():
        if not (CONFIGS / f"{name}.json").exists():
            continue
        if entry["visual"] in ("VisionTransformer", "ModifiedResNet"):
            vis.append(name)
        if entry["text"] in ("builtin", "TextTransformer"):
            txt.append(name)
    return vis, txt


VISUAL_CASES, TEXT_CASES = native_cases()
QUICK = ["ViT-B-32", "RN50", "coca_ViT-B-32", "ViT-B-16-SigLIP2", "ViT-M-16-alt", "ViT-H-14-worldwide"]


def _params(cases):
    return [pytest.param(c, marks=() if c in QUICK else pytest.mark.slow) for c in cases]


def test_case_lists_are_populated():
    assert {"ViT-B-32", "RN50", "coca_ViT-B-32"} <= set(VISUAL_CASES)
    assert {"ViT-B-32", "ViT-B-16-SigLIP2", "coca_ViT-B-32"} <= set(TEXT_CASES)


@pytest.mark.parametrize("name", _params(VISUAL_CASES))
def test_visual_layout(name):
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    with torch.device("meta"):
        visual = build_visual(cfg)
    expected = [(k[len("visual.") :], s) for k, s, _ in LAYOUTS[name]["state_dict"] if k.startswith("visual.")]
    assert layout(visual) == expected
    dtypes = {k[len("visual.") :]: d for k, _, d in LAYOUTS[name]["state_dict"] if k.startswith("visual.")}
    assert {k: str(v.dtype).replace("torch.", "") for k, v in visual.state_dict().items()} == dtypes


@pytest.mark.parametrize("name", _params(TEXT_CASES))
def test_text_layout(name):
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    with torch.device("meta"):
        text = build_text(cfg)
    entries = LAYOUTS[name]["state_dict"]
    if LAYOUTS[name]["text"] == "TextTransformer":
        # CustomTextCLIP / CoCa keep the tower under `text.`, in the tower's own order
        expected = [(k[len("text.") :], s) for k, s, _ in entries if k.startswith("text.")]
        assert layout(text) == expected
    else:
        # CLIP unpacks the tower to top level (its own order differs); compare names and shapes
        prefixes = ("visual.", "text_decoder.", "logit_scale", "logit_bias")
        expected = {k: s for k, s, _ in entries if not k.startswith(prefixes)}
        assert dict(layout(text)) == expected
    assert "attn_mask" not in text.state_dict()
