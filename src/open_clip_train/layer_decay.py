"""Per-parameter learning rates: which tower and depth each parameter sits at, layer-wise LR decay
(``--layer-decay``) and per-tower overrides (``--lr-image``, ``--lr-text``, ``--wd-image``, ``--wd-text``).

Depth within a tower: embeddings (patch/token embedding, class token, positional embedding, ``ln_pre``,
a ResNet stem) are 0, block ``i`` is ``i + 1``, everything after the last block (final norm, projection,
pooler) is ``L + 1``. A parameter's LR is ``tower_lr * decay ** (L + 1 - depth)``. Parameters of neither
tower (``logit_scale``, ``logit_bias``) are "shared" and keep the base LR. Each param group carries
``lr_scale`` (its LR over the base LR), which the schedules multiply in.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from .errors import ConfigError

IMAGE, TEXT, SHARED = "image", "text", "shared"

# Top-level attributes of CLIP (not CustomTextCLIP) that belong to its text tower; CoCa's text decoder
# consumes the text tower's output, so it counts as the text tower's top.
_CLIP_TEXT_ROOTS = frozenset({"token_embedding", "positional_embedding", "transformer", "ln_final",
                              "text_projection", "text_decoder"})
# First name component of depth-0 parameters in the native towers (ViT, ModifiedResNet stem, text).
_EMBEDDING_ROOTS = frozenset({"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "class_embedding",
                              "positional_embedding", "ln_pre", "token_embedding", "cls_emb"})
# Any name component marking an embedding in Hugging Face text models.
_HF_EMBEDDING_PARTS = frozenset({"embeddings", "embed_tokens", "shared", "wte", "wpe"})
_NATIVE_BLOCK = re.compile(r"^(?:transformer\.)?resblocks\.(\d+)\.")
_RESNET_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.")
_HF_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|block|blocks|h)\.(\d+)\.")


@dataclass(frozen=True)
class ParamDepth:
    """Where a parameter sits: its tower, its depth there, and the tower's number of blocks ``L``."""

    tower: str
    depth: int
    num_layers: int

    def lr_scale(self, layer_decay: float) -> float:
        """``layer_decay ** (L + 1 - depth)`` (1 for the top of a tower and for shared parameters)."""
        return layer_decay ** (self.num_layers + 1 - self.depth)


def _strip_wrappers(name: str) -> str:
    # DDP and torch.compile prefix every name; depth rules read the model's own names.
    while name.startswith(("module.", "_orig_mod.")):
        name = name.split(".", 1)[1]
    return name


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def split_tower(name: str) -> tuple[str, str]:
    """``(tower, name within the tower)`` for a parameter name of a CLIP/CustomTextCLIP/CoCa model."""
    name = _strip_wrappers(name)
    root = name.split(".", 1)[0]
    if root == "visual":
        return IMAGE, name[len("visual."):]
    if root == "text":
        return TEXT, name[len("text."):]
    if root in _CLIP_TEXT_ROOTS:
        return TEXT, name
    return SHARED, name


def _timm_groups(model: torch.nn.Module) -> dict[str, int]:
    """timm trunk parameter -> timm's fine-grained layer group (0 = stem, last = final norm/head)."""
    trunk = getattr(getattr(_unwrap(model), "visual", None), "trunk", None)
    if trunk is None or not hasattr(trunk, "group_matcher"):
        return {}
    from timm.models import group_parameters

    groups = group_parameters(trunk, trunk.group_matcher(coarse=False))
    return {name: gid for gid, names in groups.items() for name in names}


def _block_key(tower: str, rel: str, timm_groups: dict[str, int]) -> tuple | None:
    """A sortable key of the block holding ``rel`` (None when it is not inside a block)."""
    if tower == IMAGE and rel.startswith("trunk."):
        gid = timm_groups.get(rel[len("trunk."):])
        last = max(timm_groups.values(), default=0)
        return None if gid is None or gid in (0, last) else (gid,)
    if tower == TEXT and rel.startswith("text_decoder."):
        return None
    for pattern in (_NATIVE_BLOCK, _RESNET_BLOCK, _HF_BLOCK):
        match = pattern.search(rel)
        if match:
            return tuple(int(g) for g in match.groups())
    return None


def _is_embedding(tower: str, rel: str, timm_groups: dict[str, int]) -> bool:
    if tower == IMAGE and rel.startswith("trunk."):
        return timm_groups.get(rel[len("trunk."):]) == 0
    parts = rel.split(".")
    return parts[0] in _EMBEDDING_ROOTS or any(p in _HF_EMBEDDING_PARTS for p in parts)


def parameter_depths(model: torch.nn.Module) -> dict[str, ParamDepth]:
    """:class:`ParamDepth` of every parameter, keyed by ``model.named_parameters()`` names (frozen ones too)."""
    named = list(model.named_parameters())
    timm_groups = _timm_groups(model)
    placed = []
    blocks: dict[str, set] = {IMAGE: set(), TEXT: set()}
    for name, _ in named:
        tower, rel = split_tower(name)
        key = _block_key(tower, rel, timm_groups) if tower != SHARED else None
        if key is not None:
            blocks[tower].add(key)
        placed.append((name, tower, rel, key))
    # Blocks are numbered in order of their keys (ResNet stages then blocks, timm group ids).
    ordinal = {tower: {key: i for i, key in enumerate(sorted(keys))} for tower, keys in blocks.items()}
    depths = {}
    for name, tower, rel, key in placed:
        if tower == SHARED:
            depths[name] = ParamDepth(SHARED, 1, 0)
            continue
        num_layers = len(ordinal[tower])
        if key is not None:
            depth = ordinal[tower][key] + 1
        elif _is_embedding(tower, rel, timm_groups):
            depth = 0
        else:
            depth = num_layers + 1
        depths[name] = ParamDepth(tower, depth, num_layers)
    return depths


def _check_settings(lr: float, layer_decay, lr_image, lr_text, wd_image, wd_text) -> None:
    if lr is None or lr <= 0:
        raise ConfigError(f"--lr {lr}: per-tower or layer-wise learning rates need a base --lr > 0.")
    if layer_decay is not None and not layer_decay > 0:
        raise ConfigError(f"--layer-decay {layer_decay}: must be > 0 (e.g. 0.65-0.9; 1 = no decay).")
    for flag, value in (("--lr-image", lr_image), ("--lr-text", lr_text), ("--wd-image", wd_image),
                        ("--wd-text", wd_text)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} {value}: must be >= 0.")


def build_param_groups(
        model: torch.nn.Module,
        lr: float,
        weight_decay: float,
        layer_decay: float | None = None,
        lr_image: float | None = None,
        lr_text: float | None = None,
        wd_image: float | None = None,
        wd_text: float | None = None,
) -> list[dict]:
    """AdamW param groups with per-tower LR/weight decay and layer-wise LR decay.

    Without any of the optional settings this is exactly 3.3's ``[no-decay, decay]`` pair. Otherwise
    trainable parameters are grouped by ``(lr_scale, weight_decay)``; each group's ``lr`` is
    ``lr * lr_scale``. Weight decay follows 3.3's exclusion rule (norms, biases, gains, logit scale get 0);
    the others get the tower's ``wd_*`` or ``weight_decay``.
    """
    from .optim import exclude_from_weight_decay, param_groups

    if all(v is None for v in (layer_decay, lr_image, lr_text, wd_image, wd_text)):
        return param_groups(model, weight_decay)
    _check_settings(lr, layer_decay, lr_image, lr_text, wd_image, wd_text)
    depths = parameter_depths(model)
    if layer_decay is not None:
        _check_blocks_found(model, depths)
    tower_lr = {IMAGE: lr_image, TEXT: lr_text}
    tower_wd = {IMAGE: wd_image, TEXT: wd_text}
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        where = depths[name]
        scale = (tower_lr.get(where.tower) if tower_lr.get(where.tower) is not None else lr) / lr
        if layer_decay is not None:
            scale *= where.lr_scale(layer_decay)
        wd = tower_wd.get(where.tower)
        wd = 0.0 if exclude_from_weight_decay(name, param) else (weight_decay if wd is None else wd)
        group = groups.setdefault((scale, wd), {"params": [], "weight_decay": wd, "lr_scale": scale,
                                                "lr": lr * scale})
        group["params"].append(param)
    for group in groups.values():
        logging.debug(f"param group: lr {group['lr']:.3g} (x{group['lr_scale']:.4g}), "
                      f"weight decay {group['weight_decay']}, {len(group['params'])} tensors")
    return list(groups.values())


def _check_blocks_found(model: torch.nn.Module, depths: dict[str, ParamDepth]) -> None:
    """A trainable tower without recognisable blocks would silently get one flat LR: refuse instead."""
    for name, param in model.named_parameters():
        where = depths[name]
        if param.requires_grad and where.tower != SHARED and where.num_layers == 0:
            raise ConfigError(f"--layer-decay: cannot find the blocks of the {where.tower} tower (e.g. parameter "
                              f"{name!r}); layer decay supports native ViT/ResNet/text towers, timm trunks with "
                              "group_matcher and Hugging Face text encoders. Use --lr-image/--lr-text instead.")
