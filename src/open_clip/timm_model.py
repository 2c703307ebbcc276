"""Image tower wrapping a timm model: ``TimmModel`` (trunk + projection head).

Owns the timm adapter used by every config with ``vision_cfg.timm_model_name``: how the timm
trunk is created (its own classifier as projection, or stripped and followed by our ``head``),
the head layouts (state-dict keys ``trunk.*`` and ``head.*``), locking with frozen BatchNorm,
gradient checkpointing and ``forward_intermediates``. timm is an optional extra: this module
imports without it, the constructor raises a clear ImportError when it is missing.
"""

import logging
from collections import OrderedDict
from typing import Any, Optional, Union

import torch
from torch import nn

from .optional_modules import optional_module_attributes
from .utils import freeze_batch_norm_2d, to_2tuple

# `open_clip.timm_model.timm`: the timm package or None, as in 3.3 (code checks it to see whether timm
# towers are available); imported on first read so this module stays cheap to import.
__getattr__, __dir__ = optional_module_attributes(__name__, {"timm": "timm"})

# The timm versions that know every architecture named in model_configs/*.json (checked by
# tests/towers_ext). Keep in sync with the `timm` extra in pyproject.toml.
TIMM_REQUIREMENT = "timm>=1.0.21,<2"

_PROJ_TYPES = ("linear", "mlp", "none")
_ATTN_POOLS = ("abs_attn", "rot_attn")


class MissingExtraError(ImportError, RuntimeError):
    """An optional dependency is not installed.

    Subclasses both ImportError (what it is) and RuntimeError (what 3.3 raised), so callers
    catching either keep working.
    """


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise MissingExtraError(
            "timm image towers need the 'timm' package: pip install 'libreclip[timm]' "
            f"(installs {TIMM_REQUIREMENT})"
        ) from e
    return timm


def _create_trunk(timm, model_name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with an error that says which timm is needed for unknown names."""
    # 'hf-hub:' / 'local-dir:' names are resolved by timm itself
    if ":" not in model_name and not timm.is_model(model_name):
        raise RuntimeError(
            f"timm {timm.__version__} has no model named '{model_name}'; this config needs "
            f"{TIMM_REQUIREMENT} (pip install 'libreclip[timm]' or pip install -U timm)"
        )
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)


class TimmModel(nn.Module):
    """A timm backbone (``trunk``) followed by an optional pool + projection (``head``).

    Args:
        model_name: timm architecture name (e.g. ``'vit_base_patch16_siglip_224'``).
        embed_dim: output feature size.
        image_size: stored only (as a pair); the timm model keeps its own default input size.
        pool: ``'abs_attn'`` / ``'rot_attn'`` (timm attention pool in our head), or any timm
            ``global_pool`` value (``'avg'``, ``'token'``, ``'map'``, ``''`` = none).
        proj: ``'linear'`` or ``'mlp'`` (projection in our head), ``'none'`` (no projection,
            trunk features returned as is), or falsy (timm's own classifier projects to
            ``embed_dim``).
        proj_bias: bias of the last projection layer.
        drop: dropout before the linear projection / inside the MLP.
        drop_path: timm stochastic depth rate (not passed when None).
        patch_drop: timm patch dropout rate (not passed when None).
        pretrained: load timm's own pretrained weights (downloads; off by default).
    """

    def __init__(
            self,
            model_name: str,
            embed_dim: int,
            image_size: Union[int, tuple[int, int]] = 224,
            pool: str = "avg",
            proj: Optional[str] = "linear",
            proj_bias: bool = False,
            drop: float = 0.,
            drop_path: Optional[float] = None,
            patch_drop: Optional[float] = None,
            pretrained: bool = False,
    ):
        super().__init__()
        timm = _import_timm()
        if proj and proj not in _PROJ_TYPES:
            raise ValueError(f"timm_proj={proj!r} is not supported; use one of {_PROJ_TYPES} or null")
        self.image_size = to_2tuple(image_size)
        kwargs = {}
        if drop_path is not None:
            kwargs["drop_path_rate"] = drop_path
        if patch_drop is not None:
            kwargs["patch_drop_rate"] = patch_drop

        own_head = proj in ("linear", "mlp") or pool in _ATTN_POOLS
        if not own_head:
            # timm's classifier is the projection (or nothing with proj='none').
            num_classes = 0 if proj == "none" else embed_dim
            self.trunk = _create_trunk(timm, model_name, pretrained, num_classes=num_classes,
                                       global_pool=pool, **kwargs)
            width = embed_dim if num_classes else self.trunk.num_features
        else:
            self.trunk = _create_trunk(timm, model_name, pretrained, **kwargs)
            if pool in _ATTN_POOLS:
                self.trunk.reset_classifier(0, global_pool="")
            elif pool:
                self.trunk.reset_classifier(0, global_pool=pool)
            else:
                self.trunk.reset_classifier(0)
            width = self.trunk.num_features
        self.head = self._build_head(width, embed_dim, pool, proj, proj_bias, drop)

    def _build_head(self, width: int, embed_dim: int, pool: str, proj: Optional[str],
                    proj_bias: bool, drop: float) -> nn.Sequential:
        """Pool (attention pools only) then projection, keyed as 3.3 checkpoints expect."""
        from timm.layers import AttentionPool2d, Mlp, RotAttentionPool2d

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if pool in _ATTN_POOLS:
            feat_size = self.trunk.pretrained_cfg.get("pool_size", None)
            if not feat_size:
                raise ValueError(f"timm_pool={pool!r} needs a trunk with 2-D (NCHW) features; "
                                 f"'{type(self.trunk).__name__}' has none")
            if pool == "abs_attn":
                layers["pool"] = AttentionPool2d(width, feat_size=feat_size, out_features=embed_dim)
            else:
                layers["pool"] = RotAttentionPool2d(width, out_features=embed_dim)
            width = embed_dim
        if proj == "linear":
            layers["drop"] = nn.Dropout(drop)
            layers["proj"] = nn.Linear(width, embed_dim, bias=proj_bias)
        elif proj == "mlp":
            layers["mlp"] = Mlp(width, 2 * embed_dim, embed_dim, drop=(drop, 0.), bias=(True, proj_bias))
        return nn.Sequential(layers)

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the trunk (the head stays trainable).

        Args:
            unlocked_groups: leave the last N timm parameter groups (``trunk.group_matcher``)
                trainable; 0 freezes the whole trunk.
            freeze_bn_stats: also replace BatchNorm layers of the frozen part by
                FrozenBatchNorm2d (running statistics no longer updated).
        """
        if not unlocked_groups:
            for param in self.trunk.parameters():
                param.requires_grad = False
            if freeze_bn_stats:
                freeze_batch_norm_2d(self.trunk)
            return
        from timm.models import group_modules, group_parameters

        matcher = self.trunk.group_matcher()
        param_groups = group_parameters(self.trunk, matcher)
        last_frozen = max(param_groups.keys()) - unlocked_groups
        for group_id in range(last_frozen + 1):
            for name in param_groups.get(group_id, ()):
                self.trunk.get_parameter(name).requires_grad = False
        if freeze_bn_stats:
            module_groups = group_modules(self.trunk, matcher, reverse=True)
            frozen = {name for name, group_id in module_groups.items() if group_id <= last_frozen}
            freeze_batch_norm_2d(self.trunk, frozen)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        try:
            self.trunk.set_grad_checkpointing(enable)
        except Exception as e:  # some timm models have no checkpointing support
            logging.warning(f"timm model '{type(self.trunk).__name__}' does not support grad "
                            f"checkpointing ({e}); continuing without it")

    @torch.jit.ignore
    def set_input_size(self, image_size: Union[int, tuple[int, int]]) -> None:
        """Change the trunk's input size (timm resamples position embeddings) and ours."""
        if not hasattr(self.trunk, "set_input_size"):
            raise RuntimeError(f"timm model '{type(self.trunk).__name__}' cannot change its input size")
        self.trunk.set_input_size(img_size=image_size)
        self.image_size = to_2tuple(image_size)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, list[int]]] = None,
            stop_early: bool = False,
            normalize_intermediates: bool = False,
            intermediates_only: bool = False,
            output_fmt: str = "NCHW",
            output_extra_tokens: bool = False,
    ) -> dict[str, Union[torch.Tensor, list[torch.Tensor]]]:
        """Trunk features of selected blocks (``image_intermediates``, prefix tokens in
        ``image_intermediates_prefix`` when asked) plus ``image_features`` unless
        ``intermediates_only``."""
        extra = {"return_prefix_tokens": True} if output_extra_tokens else {}
        trunk_out = self.trunk.forward_intermediates(
            x, indices=indices, intermediates_only=intermediates_only, norm=normalize_intermediates,
            stop_early=stop_early, output_fmt=output_fmt, **extra,
        )
        intermediates = trunk_out if intermediates_only else trunk_out[1]
        out: dict[str, Union[torch.Tensor, list[torch.Tensor]]] = {}
        if output_extra_tokens and intermediates and isinstance(intermediates[0], tuple):
            out["image_intermediates_prefix"] = [t[1] for t in intermediates]
            intermediates = [t[0] for t in intermediates]
        out["image_intermediates"] = intermediates
        if not intermediates_only:
            out["image_features"] = self.head(self.trunk.forward_head(trunk_out[0]))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, 3, H, W) -> trunk features (B, C) -> (B, embed_dim)
        return self.head(self.trunk(x))
