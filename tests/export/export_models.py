"""Tiny model configs for the export tests (one per family and option group), a builder that
registers them and gives every weight a random non-trivial value, and realistic inputs."""

import json
import pathlib

import torch

import open_clip

HERE = pathlib.Path(__file__).parent
_TEXT = {"context_length": 20, "vocab_size": 1000, "width": 32, "heads": 4, "layers": 2}
_VIT = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16}

CONFIGS = {
    # transformers-compatible CLIP: QuickGELU, argmax pooling
    "export-vit-quickgelu": {"embed_dim": 32, "quick_gelu": True, "vision_cfg": dict(_VIT), "text_cfg": dict(_TEXT)},
    # the same with plain GELU
    "export-vit-gelu": {"embed_dim": 32, "vision_cfg": dict(_VIT), "text_cfg": dict(_TEXT)},
    # transformers-compatible CLIP: tanh GELU, eps 1e-6, first-eos pooling
    "export-vit-eos": {
        "embed_dim": 24,
        "vision_cfg": {**_VIT, "act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}},
        "text_cfg": {**_TEXT, "pool_type": "eos", "eos_id": 999, "act_kwargs": {"approximate": "tanh"}},
    },
    # native ViT options: rectangular image, LayerScale, attentional pooler
    "export-vit-options": {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {**_VIT, "image_size": [32, 48], "ls_init_value": 0.1, "attentional_pool": True,
                       "attn_pooler_queries": 8, "attn_pooler_heads": 4},
        "text_cfg": {**_TEXT, "ls_init_value": 0.1},
    },
    # custom text tower and custom blocks
    "export-custom-text": {
        "embed_dim": 32, "custom_text": True,
        "vision_cfg": {**_VIT, "pool_type": "avg", "final_ln_after_pool": True, "no_ln_pre": True,
                       "qk_norm": True, "scale_attn": True, "norm_kwargs": {"eps": 1e-6}},
        "text_cfg": {**_TEXT, "no_causal_mask": True, "pool_type": "last", "proj_bias": True, "pad_id": 1,
                     "scale_fc": True, "act_kwargs": {"approximate": "tanh"}},
    },
    "export-resnet": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8,
                                                      "head_width": 16}, "text_cfg": dict(_TEXT)},
    "export-coca": {
        "embed_dim": 32, "custom_text": True,
        "vision_cfg": {**_VIT, "attentional_pool": True, "attn_pooler_queries": 8, "attn_pooler_heads": 4,
                       "output_tokens": True},
        "text_cfg": {**_TEXT, "embed_cls": True, "output_tokens": True, "pad_id": 0},
        "multimodal_cfg": {**_TEXT, "attn_pooler_heads": 4},
    },
    # SigLIP-style: timm SigLIP ViT (registered below) + bidirectional text pooled at the last token
    "export-sl-timm": {
        "embed_dim": 64, "custom_text": True, "init_logit_bias": -10,
        "vision_cfg": {"image_size": 32, "timm_model_name": "vit_libreclip_test_patch8_siglip_32",
                       "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {**_TEXT, "context_length": 16, "no_causal_mask": True, "pool_type": "last", "proj_bias": True,
                     "norm_kwargs": {"eps": 1e-6}},
    },
}


def register_tiny_timm_siglip() -> None:
    """A 2-block SigLIP-shaped timm ViT (no class token, latent attention pool) named like timm's SigLIPs."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    name = "vit_libreclip_test_patch8_siglip_32"
    if timm.is_model(name):
        return

    def vit_libreclip_test_patch8_siglip_32(pretrained=False, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"}
        args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, class_token=False,
                    global_pool="map")
        return VisionTransformer(**{**args, **kwargs})

    register_model(vit_libreclip_test_patch8_siglip_32)


def register(name: str, tmp_path: pathlib.Path) -> dict:
    """Register ``CONFIGS[name]`` under ``name`` (the test registry is restored after each test)."""
    if "timm_model_name" in CONFIGS[name]["vision_cfg"]:
        register_tiny_timm_siglip()
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(CONFIGS[name]))
    open_clip.add_model_config(path)
    return json.loads(path.read_text())


def build(name: str, tmp_path: pathlib.Path, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """(eval model with every weight randomly perturbed, its config). Perturbing matters: zero
    biases and unit norms would hide a wrongly mapped bias or norm weight."""
    cfg = register(name, tmp_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(name).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model, cfg


def save_weights(model: torch.nn.Module, path: pathlib.Path) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def caption_lines() -> list:
    """Real caption and prose lines (a sample of the project's text benchmark corpus)."""
    with open(HERE / "captions_sample.txt", encoding="utf-8", newline="") as f:
        return [line for line in f.read().split("\n") if line]


def text_inputs(model: torch.nn.Module, n: int = 5) -> torch.Tensor:
    """Ids of real captions folded into a tiny vocabulary the way the golden fixtures do: start /
    end of text become vocab-2 / vocab-1 (so the end token stays the largest id)."""
    context_length = model.context_length
    vocab = getattr(model, "vocab_size", None) or model.text.vocab_size  # CoCa keeps it on its text tower
    ids = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)(caption_lines()[:n])
    folded = ids % (vocab - 3) + 1
    folded[ids == 0] = 0
    folded[ids == 49406] = vocab - 2
    folded[ids == 49407] = vocab - 1
    return folded


def image_inputs(model: torch.nn.Module, n: int = 3, seed: int = 1) -> torch.Tensor:
    from open_clip.utils import to_2tuple

    height, width = to_2tuple(model.visual.image_size)
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def outside_tokenizer_json(text: str) -> bool:
    """Texts tokenizer.json documents it cannot tokenize like us: ftfy mojibake repair, or a
    special-token string glued to preceding punctuation."""
    import ftfy

    mojibake = ftfy.fix_encoding(text) != text
    glued_special = any(f"{p}<{s}_of_text>" in text for p in "\"'(<[{" for s in ("start", "end"))
    return mojibake or glued_special
