"""open_clip SigLIP <-> ``transformers.SiglipModel``: config and weights, both directions.

The image side must be a timm SigLIP ViT (no class or register tokens, latent attention pool
"map", no pre-norm, fc-norm or head, plain blocks) whose weights map one to one onto
``SiglipVisionModel``; the text side our bidirectional text transformer pooled at the last token
with a projection. The other direction needs a timm architecture of the same shape: it is looked
up among timm's registered SigLIP models (or named by the caller).
"""

from typing import Any, Optional

import torch
from torch import nn

from .common import ExportError
from .hf_clip import tower_cfg_from_hf
from .hf_keys import blocks_from_hf, blocks_to_hf, copy_keys, timm_blocks_from_hf, timm_blocks_to_hf
from .hf_towers import NativeText, block_settings, hf_activation, native_text, refuse

__all__ = ["find_timm_siglip", "is_siglip_model", "siglip_from_hf", "siglip_to_hf"]

_TARGET = "transformers.SiglipModel"
_POOL_PAIRS = (("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))


def is_siglip_model(model: nn.Module) -> bool:
    """SigLIP-style: a logit bias and a timm image tower (the models SiglipModel can hold)."""
    return getattr(model, "logit_bias", None) is not None and hasattr(model.visual, "trunk")


def _trunk_problems(trunk: nn.Module) -> list[str]:
    ident = nn.Identity
    checks = [
        (type(trunk).__name__ == "VisionTransformer", f"a timm {type(trunk).__name__} trunk (only a timm ViT maps)"),
        (getattr(trunk, "num_prefix_tokens", 1) == 0, "class / register tokens in the timm ViT"),
        (getattr(trunk, "global_pool", "") == "map", f"timm_pool={getattr(trunk, 'global_pool', None)!r} "
                                                     f"(SiglipVisionModel pools with a latent attention head, 'map')"),
        (isinstance(getattr(trunk, "norm_pre", None), ident), "a pre-norm in the timm ViT"),
        (isinstance(getattr(trunk, "fc_norm", None), ident), "an fc-norm in the timm ViT"),
        (isinstance(getattr(trunk, "head", None), ident), "a timm classifier head (timm_proj must be 'none')"),
        (not getattr(trunk, "dynamic_img_size", False), "dynamic image size"),
    ]
    problems = [msg for ok, msg in checks if not ok]
    if problems:
        return problems
    pool = trunk.attn_pool
    if getattr(pool, "latent_len", 1) != 1 or not isinstance(pool.q_norm, ident) or getattr(pool, "pos_embed", None) \
            is not None:
        problems.append("a latent attention pool with several latents, q/k norms or position embeddings")
    for i, block in enumerate(trunk.blocks):
        parts = (block.ls1, block.ls2, block.attn.q_norm, block.attn.k_norm, getattr(block.attn, "norm", ident()),
                 getattr(block.mlp, "norm", ident()))
        if type(block).__name__ != "Block" or not all(isinstance(p, ident) for p in parts):
            problems.append(f"timm block {i} ({type(block).__name__} with LayerScale or extra norms)")
            break
        if block.attn.qkv.bias is None:
            problems.append("attention without q/k/v bias")
            break
    if trunk.patch_embed.proj.bias is None or not isinstance(trunk.patch_embed.norm, ident):
        problems.append("a patch embedding without bias or with a norm")
    return problems


def _text_problems(text: Optional[NativeText]) -> list[str]:
    if text is None:
        return ["a non-native text tower (text_cfg.hf_model_name); SiglipTextModel maps our text transformer only"]
    problems = []
    if text.cls_emb is not None:
        problems.append("text_cfg.embed_cls")
    if text.causal:
        problems.append("a causal text mask (SiglipTextModel is bidirectional: text_cfg.no_causal_mask must be true)")
    if text.pool_type != "last":
        problems.append(f"text_cfg.pool_type={text.pool_type!r} (SiglipTextModel pools the last token)")
    if text.module.text_projection is None:
        problems.append("text_cfg.proj_type='none' (SiglipTextModel has a projection head)")
    if getattr(text.module, "use_pad_mask", False):
        problems.append("a text padding mask")
    return problems


def _vision_config(trunk: nn.Module) -> dict[str, Any]:
    block = trunk.blocks[0]
    act = hf_activation(block.mlp.act, "vision")
    if hf_activation(trunk.attn_pool.mlp.act, "vision attention pool") != act:
        raise ExportError(f"{_TARGET} cannot represent this model: the attention pool's activation differs "
                          f"from the blocks'.")
    img, patch = tuple(trunk.patch_embed.img_size), tuple(trunk.patch_embed.patch_size)
    if img[0] != img[1] or patch[0] != patch[1]:
        raise ExportError(f"{_TARGET} cannot represent this model: non-square image or patch size ({img}, {patch}).")
    return {"hidden_size": trunk.embed_dim, "intermediate_size": block.mlp.fc1.out_features,
            "num_hidden_layers": len(trunk.blocks), "num_attention_heads": block.attn.num_heads,
            "image_size": img[0], "patch_size": patch[0], "num_channels": 3, "hidden_act": act,
            "layer_norm_eps": float(trunk.norm.eps), "vision_use_head": True}


def siglip_to_hf(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``SiglipConfig`` kwargs, SiglipModel state dict); ExportError naming what cannot be represented."""
    visual, text = model.visual, native_text(model)
    problems = _trunk_problems(visual.trunk) + _text_problems(text)
    if len(visual.head):
        problems.append("a projection head after the timm trunk (timm_proj must be 'none')")
    if not problems:
        problems += block_settings(text.module.transformer.resblocks, "text")[0]
    refuse(_TARGET, problems)
    _, text_settings = block_settings(text.module.transformer.resblocks, "text")
    vision_config = _vision_config(visual.trunk)
    module = text.module
    projection = module.text_projection
    embed_dim = projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1]
    text_config = {**text_settings, "hidden_size": module.transformer.width, "vocab_size": module.vocab_size,
                   "max_position_embeddings": module.positional_embedding.shape[0], "projection_size": embed_dim}
    config = {"text_config": text_config, "vision_config": vision_config}

    sd = {k: v.detach() for k, v in model.state_dict().items()}
    pool = visual.trunk.attn_pool
    v, t = "visual.trunk.", text.prefix
    out = {
        "logit_scale": sd["logit_scale"].reshape(1),
        "logit_bias": sd["logit_bias"].reshape(1),
        "vision_model.embeddings.patch_embedding.weight": sd[v + "patch_embed.proj.weight"],
        "vision_model.embeddings.patch_embedding.bias": sd[v + "patch_embed.proj.bias"],
        "vision_model.embeddings.position_embedding.weight": sd[v + "pos_embed"][0],
        "vision_model.head.probe": sd[v + "attn_pool.latent"].reshape(1, 1, -1),
        "vision_model.head.attention.in_proj_weight": torch.cat([pool.q.weight, pool.kv.weight]).detach(),
        "vision_model.head.attention.in_proj_bias": torch.cat([pool.q.bias, pool.kv.bias]).detach(),
        "text_model.embeddings.token_embedding.weight": sd[t + "token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd[t + "positional_embedding"],
    }
    if isinstance(projection, nn.Linear):
        copy_keys(sd, out, [("text_projection", "head")], t, "text_model.")
        if projection.bias is None:
            out["text_model.head.bias"] = torch.zeros(embed_dim)
    else:
        out["text_model.head.weight"] = sd[t + "text_projection"].t()
        out["text_model.head.bias"] = torch.zeros(embed_dim)
    copy_keys(sd, out, [("norm", "post_layernorm")], v, "vision_model.")
    copy_keys(sd, out, _POOL_PAIRS, v + "attn_pool.", "vision_model.head.")
    copy_keys(sd, out, [("ln_final", "final_layer_norm")], t, "text_model.")
    out.update(timm_blocks_to_hf(sd, v, "vision_model.encoder.", vision_config["num_hidden_layers"]))
    out.update(blocks_to_hf(sd, t + "transformer.", "text_model.encoder.", text_config["num_hidden_layers"]))
    return config, {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# transformers -> open_clip
# ---------------------------------------------------------------------------------------------

def _trunk_matches(trunk: nn.Module, vision: dict[str, Any]) -> bool:
    if _trunk_problems(trunk):
        return False
    block = trunk.blocks[0]
    try:
        act = hf_activation(block.mlp.act, "vision")
    except ExportError:
        return False
    return (trunk.embed_dim == vision["hidden_size"] and len(trunk.blocks) == vision["num_hidden_layers"]
            and block.attn.num_heads == vision["num_attention_heads"]
            and block.mlp.fc1.out_features == vision["intermediate_size"]
            and tuple(trunk.patch_embed.img_size) == (vision["image_size"],) * 2
            and tuple(trunk.patch_embed.patch_size) == (vision["patch_size"],) * 2
            and act == vision.get("hidden_act", "gelu_pytorch_tanh")
            and abs(trunk.norm.eps - vision.get("layer_norm_eps", 1e-6)) < 1e-12)


def find_timm_siglip(vision: dict[str, Any]) -> str:
    """The timm model name whose SigLIP ViT has exactly the shape of ``vision`` (a SiglipVisionConfig dict).

    Candidates are timm's registered '*siglip*' ViTs (built on the meta device, nothing downloaded).
    """
    import timm

    candidates = [n for n in timm.list_models("*siglip*") if "gap" not in n and not n.startswith("naflex")]
    # timm names its SigLIPs '..._patch{P}_siglip_{S}': try those first, building a trunk costs time
    named = [n for n in candidates if f"patch{vision['patch_size']}_" in n and n.endswith(f"_{vision['image_size']}")]
    for name in named or candidates:
        with torch.device("meta"):
            try:
                trunk = timm.create_model(name, pretrained=False, num_classes=0)
            except Exception:  # a candidate timm cannot build with these arguments is not a match
                continue
        if _trunk_matches(trunk, vision):
            return name
    act = vision.get("hidden_act", "gelu_pytorch_tanh")
    hint = (" timm's SigLIP ViTs use exact GELU while this config uses tanh-approximated GELU, which "
            "vision_cfg cannot change; OpenCLIP publishes SigLIP weights as e.g. 'ViT-B-16-SigLIP' / 'webli'."
            if act != "gelu" else "")
    raise ExportError(f"No registered timm SigLIP ViT has the shape of this vision_config (hidden_size "
                      f"{vision['hidden_size']}, {vision['num_hidden_layers']} layers, image {vision['image_size']}, "
                      f"patch {vision['patch_size']}, hidden_act {act!r}); pass timm_model_name.{hint}")


def siglip_from_hf(hf_config: dict[str, Any], sd: dict[str, torch.Tensor], timm_model_name: Optional[str] = None,
                   ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(open_clip ``model_cfg``, CustomTextCLIP state dict) of a SiglipModel config dict + state dict."""
    vision, text = hf_config["vision_config"], hf_config["text_config"]
    if not vision.get("vision_use_head", True):
        raise ExportError("vision_config.vision_use_head=False: open_clip needs the attention-pool head")
    timm_name = timm_model_name or find_timm_siglip(vision)
    quick_gelu, text_cfg = tower_cfg_from_hf(text, "text_config")
    if quick_gelu:
        raise ExportError("text_config.hidden_act='quick_gelu' with a timm image tower is not representable")
    embed_dim = text.get("projection_size") or text["hidden_size"]
    text_cfg.update(context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"],
                    heads=text["num_attention_heads"], no_causal_mask=True, pool_type="last", proj_bias=True)
    model_cfg = {
        "embed_dim": embed_dim, "custom_text": True, "init_logit_bias": -10.0,
        "vision_cfg": {"image_size": vision["image_size"], "timm_model_name": timm_name,
                       "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": text_cfg,
    }
    v, t = "visual.trunk.", "text."
    in_w, in_b = sd["vision_model.head.attention.in_proj_weight"], sd["vision_model.head.attention.in_proj_bias"]
    width = vision["hidden_size"]
    out = {
        "logit_scale": sd["logit_scale"].reshape(()),
        "logit_bias": sd["logit_bias"].reshape(()),
        v + "patch_embed.proj.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        v + "patch_embed.proj.bias": sd["vision_model.embeddings.patch_embedding.bias"],
        v + "pos_embed": sd["vision_model.embeddings.position_embedding.weight"][None],
        v + "attn_pool.latent": sd["vision_model.head.probe"].reshape(1, 1, -1),
        v + "attn_pool.q.weight": in_w[:width], v + "attn_pool.q.bias": in_b[:width],
        v + "attn_pool.kv.weight": in_w[width:], v + "attn_pool.kv.bias": in_b[width:],
        t + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        t + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
    }
    copy_keys(sd, out, [("head", "text_projection"), ("final_layer_norm", "ln_final")], "text_model.", t)
    copy_keys(sd, out, [("post_layernorm", "norm")], "vision_model.", v)
    copy_keys(sd, out, [(h, o) for o, h in _POOL_PAIRS], "vision_model.head.", v + "attn_pool.")
    out.update(timm_blocks_from_hf(sd, "vision_model.encoder.", v, vision["num_hidden_layers"]))
    out.update(blocks_from_hf(sd, "text_model.encoder.", t + "transformer.", text["num_hidden_layers"]))
    return model_cfg, {k: v.contiguous() for k, v in out.items()}
