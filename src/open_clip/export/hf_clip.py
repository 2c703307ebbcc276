"""open_clip CLIP <-> ``transformers.CLIPModel``: config and weights, both directions.

transformers' CLIP is a ViT with a class token, pre- and post-LayerNorm and a linear projection,
and a causal text transformer pooled at the end-of-text token. Models outside that shape
(ModifiedResNet, attentional or average pooling, LayerScale, custom blocks, bidirectional text,
other text pooling, a projection bias, a logit bias) are refused with the feature named.
"""

from typing import Any

import torch
from torch import nn

from ..models.vision_transformer import VisionTransformer
from ..utils import to_2tuple
from .common import ExportError
from .hf_keys import blocks_from_hf, blocks_to_hf, copy_keys
from .hf_towers import NativeText, block_settings, native_text, refuse

__all__ = ["clip_from_hf", "clip_to_hf"]

_TARGET = "transformers.CLIPModel"
# transformers pools CLIP text by argmax of the ids when eos_token_id == 2 (its legacy rule), else
# at the first eos_token_id: our 'argmax' and 'eos' pooling respectively.
_ARGMAX_EOS_ID = 2


def _vision_problems(visual: nn.Module) -> list[str]:
    if not isinstance(visual, VisionTransformer):
        kind = type(visual).__name__
        return [f"the {kind} image tower (only a native ViT maps to CLIPVisionModel)"]
    problems = []
    if len(set(to_2tuple(visual.image_size))) != 1 or len(set(to_2tuple(visual.patch_size))) != 1:
        problems.append(f"a non-square image or patch size (image_size={visual.image_size}, "
                        f"patch_size={visual.patch_size})")
    if visual.attn_pool is not None:
        problems.append("vision_cfg.attentional_pool (attentional pooler)")
    if visual.pool_type != "tok":
        problems.append(f"vision_cfg.pool_type={visual.pool_type!r} (only class-token pooling)")
    if isinstance(visual.ln_pre, nn.Identity):
        problems.append("vision_cfg.no_ln_pre (CLIPVisionModel always has pre_layrnorm)")
    if visual.proj is None:
        problems.append("a vision tower without projection")
    return problems


def _text_problems(text: NativeText) -> list[str]:
    problems = []
    if text.cls_emb is not None:
        problems.append("text_cfg.embed_cls (a learned CLS token)")
    if not text.causal:
        problems.append("text_cfg.no_causal_mask (CLIP text attention is always causal)")
    if text.pool_type == "eos" and text.eos_id == _ARGMAX_EOS_ID:
        problems.append("text_cfg.pool_type='eos' with eos_id=2 (transformers reads eos_token_id=2 as argmax pooling)")
    elif text.pool_type not in ("argmax", "eos"):
        problems.append(f"text_cfg.pool_type={text.pool_type!r} (only argmax / eos pooling)")
    projection = text.module.text_projection
    if isinstance(projection, nn.Linear):
        problems.append("text_cfg.proj_bias (a text projection with bias)")
    elif projection is None:
        problems.append("text_cfg.proj_type='none' (no text projection)")
    return problems


def _check(model: nn.Module) -> NativeText:
    if hasattr(model, "text_decoder"):
        refuse(_TARGET, ["CoCa (multimodal text decoder, attentional pooler); transformers has no CoCa model"])
    text = native_text(model)
    problems = _vision_problems(model.visual)
    if text is None:
        problems.append(f"the {type(getattr(model, 'text', None)).__name__} text tower (text_cfg.hf_model_name); "
                        f"only the native text transformer maps to CLIPTextModel")
    else:
        problems += _text_problems(text)
    if getattr(model, "logit_bias", None) is not None:
        problems.append("init_logit_bias (a SigLIP-style logit bias; CLIPModel has none)")
    if not problems:
        vision_problems, _ = block_settings(model.visual.transformer.resblocks, "vision")
        text_problems, _ = block_settings(text.module.transformer.resblocks, "text")
        problems += vision_problems + text_problems
    refuse(_TARGET, problems)
    return text


def _hf_config(model: nn.Module, text: NativeText) -> dict[str, Any]:
    visual = model.visual
    _, vision_settings = block_settings(visual.transformer.resblocks, "vision")
    _, text_settings = block_settings(text.module.transformer.resblocks, "text")
    text_width = text.module.transformer.width
    vision_config = {**vision_settings, "hidden_size": visual.transformer.width, "num_channels": 3,
                     "image_size": to_2tuple(visual.image_size)[0], "patch_size": to_2tuple(visual.patch_size)[0]}
    eos = _ARGMAX_EOS_ID if text.pool_type == "argmax" else text.eos_id
    text_config = {**text_settings, "hidden_size": text_width, "vocab_size": text.module.vocab_size,
                   "max_position_embeddings": text.module.positional_embedding.shape[0],
                   "eos_token_id": eos, "bos_token_id": None, "pad_token_id": None}
    return {"text_config": text_config, "vision_config": vision_config, "projection_dim": visual.proj.shape[1],
            "logit_scale_init_value": float(model.logit_scale.detach().reshape(()).item())}


def clip_to_hf(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``CLIPConfig`` kwargs, CLIPModel state dict) of a CLIP / CustomTextCLIP; ExportError if not representable."""
    text = _check(model)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    config = _hf_config(model, text)
    t = text.prefix
    out = {
        "logit_scale": sd["logit_scale"].reshape(()),
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "visual_projection.weight": sd["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": sd[t + "token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd[t + "positional_embedding"],
        "text_projection.weight": sd[t + "text_projection"].t(),
    }
    copy_keys(sd, out, [("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")], "visual.", "vision_model.")
    copy_keys(sd, out, [("ln_final", "final_layer_norm")], t, "text_model.")
    out.update(blocks_to_hf(sd, "visual.transformer.", "vision_model.encoder.",
                            config["vision_config"]["num_hidden_layers"]))
    out.update(blocks_to_hf(sd, t + "transformer.", "text_model.encoder.", config["text_config"]["num_hidden_layers"]))
    return config, {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# transformers -> open_clip
# ---------------------------------------------------------------------------------------------

def _act_cfg(act: str, where: str) -> tuple[bool, dict[str, Any]]:
    """(quick_gelu, act_kwargs or {}) for a transformers ``hidden_act``."""
    if act == "quick_gelu":
        return True, {}
    if act == "gelu":
        return False, {}
    if act in ("gelu_pytorch_tanh", "gelu_new"):
        return False, {"act_kwargs": {"approximate": "tanh"}}
    raise ExportError(f"{where}.hidden_act={act!r} has no open_clip equivalent (quick_gelu, gelu or tanh-GELU)")


def tower_cfg_from_hf(cfg: dict[str, Any], where: str) -> tuple[bool, dict[str, Any]]:
    """(quick_gelu, the open_clip tower fields shared by ViT and text) of a transformers sub-config."""
    width, inter = cfg["hidden_size"], cfg["intermediate_size"]
    mlp_ratio = inter / width
    if int(width * mlp_ratio) != inter:
        raise ExportError(f"{where}.intermediate_size={inter} is not int(hidden_size * mlp_ratio) for any ratio")
    quick_gelu, fields = _act_cfg(cfg.get("hidden_act", "gelu"), where)
    fields.update(width=width, layers=cfg["num_hidden_layers"], mlp_ratio=mlp_ratio)
    eps = cfg.get("layer_norm_eps", 1e-5)
    if eps != 1e-5:
        fields["norm_kwargs"] = {"eps": eps}
    return quick_gelu, fields


def clip_cfg_from_hf(hf_config: dict[str, Any]) -> dict[str, Any]:
    """open_clip ``model_cfg`` of a ``CLIPConfig`` dict."""
    vision, text = hf_config["vision_config"], hf_config["text_config"]
    v_quick, vision_cfg = tower_cfg_from_hf(vision, "vision_config")
    t_quick, text_cfg = tower_cfg_from_hf(text, "text_config")
    if v_quick != t_quick:
        raise ExportError("vision_config and text_config disagree on quick_gelu; open_clip has one quick_gelu switch")
    heads = vision["num_attention_heads"]
    if vision["hidden_size"] % heads:
        raise ExportError(f"vision_config.hidden_size={vision['hidden_size']} is not a multiple of {heads} heads")
    vision_cfg.update(image_size=vision["image_size"], patch_size=vision["patch_size"],
                      head_width=vision["hidden_size"] // heads)
    text_cfg.update(context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"],
                    heads=text["num_attention_heads"])
    eos = text.get("eos_token_id", _ARGMAX_EOS_ID)
    if eos != _ARGMAX_EOS_ID:
        text_cfg.update(pool_type="eos", eos_id=eos)
    return {"embed_dim": hf_config["projection_dim"], "quick_gelu": v_quick, "vision_cfg": vision_cfg,
            "text_cfg": text_cfg}


def clip_from_hf(hf_config: dict[str, Any], sd: dict[str, torch.Tensor],
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(open_clip ``model_cfg``, CLIP state dict) of a transformers CLIPModel config dict + state dict."""
    model_cfg = clip_cfg_from_hf(hf_config)
    out = {
        "logit_scale": sd["logit_scale"].reshape(()),
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": sd["visual_projection.weight"].t(),
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "text_projection": sd["text_projection.weight"].t(),
    }
    copy_keys(sd, out, [("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")], "vision_model.", "visual.")
    copy_keys(sd, out, [("final_layer_norm", "ln_final")], "text_model.", "")
    out.update(blocks_from_hf(sd, "vision_model.encoder.", "visual.transformer.", model_cfg["vision_cfg"]["layers"]))
    out.update(blocks_from_hf(sd, "text_model.encoder.", "transformer.", model_cfg["text_cfg"]["layers"]))
    return model_cfg, {k: v.contiguous() for k, v in out.items()}
