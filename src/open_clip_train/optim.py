"""Optimizer and gradient-scaler construction (AdamW with 3.3's weight-decay rules, or timm)."""

from __future__ import annotations

import logging

import torch

from .errors import ConfigError


def exclude_from_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """3.3's rule: no decay for <2-D params and names containing bn/ln/bias/logit_scale.

    Substring tests are case-sensitive; 2-D embeddings and projections are decayed (quirk kept).
    """
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """``[no-decay group, decay group]`` over trainable params (order matters for resume)."""
    named = list(model.named_parameters())
    gain_or_bias = [p for n, p in named if exclude_from_weight_decay(n, p) and p.requires_grad]
    rest = [p for n, p in named if not exclude_from_weight_decay(n, p) and p.requires_grad]
    return [
        {"params": gain_or_bias, "weight_decay": 0.0},
        {"params": rest, "weight_decay": weight_decay},
    ]


def _adamw(groups: list[dict], **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for these params (about 4x faster steps on CPU).

    Same algorithm and state_dict layout as the default implementation; only rounding differs.
    """
    params = [p for g in groups for p in g["params"]]
    fusable = params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if fusable:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass  # older torch or unsupported dtype/device: fall back to the default kernel
    return torch.optim.AdamW(groups, **kwargs)


def create_optimizer(
        model: torch.nn.Module,
        opt: str = "adamw",
        lr: float = 5e-4,
        wd: float = 0.2,
        beta1: float | None = 0.9,
        beta2: float | None = 0.999,
        eps: float | None = 1e-8,
        momentum: float | None = None,
        layer_decay: float | None = None,
        lr_image: float | None = None,
        lr_text: float | None = None,
        wd_image: float | None = None,
        wd_text: float | None = None,
) -> torch.optim.Optimizer:
    """AdamW with the 3.3 parameter groups, or ``timm/<name>`` via timm's optimizer factory.

    ``layer_decay`` and the per-tower ``lr_*``/``wd_*`` (AdamW only) split the groups further, see
    :func:`layer_decay.build_param_groups`; left at None the groups are exactly 3.3's.
    """
    opt_name = opt.lower()
    tower_settings = dict(layer_decay=layer_decay, lr_image=lr_image, lr_text=lr_text, wd_image=wd_image,
                          wd_text=wd_text)
    if opt_name.startswith("timm/") and any(v is not None for v in tower_settings.values()):
        raise ConfigError(f"--opt {opt}: --layer-decay, --lr-image, --lr-text, --wd-image and --wd-text work with "
                          "--opt adamw only; drop them or use adamw.")
    if opt_name.startswith("timm/"):
        if (beta1 is None) != (beta2 is None):
            raise ConfigError("--opt timm/...: give both --beta1 and --beta2, or neither.")
        try:
            from timm.optim import create_optimizer_v2
        except ImportError as e:
            raise ConfigError(f"--opt {opt}: needs the `timm` package, which is not installed.") from e
        kwargs = {}
        if beta1 is not None:
            kwargs["betas"] = (beta1, beta2)
        if momentum is not None:
            kwargs["momentum"] = momentum
        if eps is not None:
            kwargs["eps"] = eps
        try:
            optimizer = create_optimizer_v2(model, opt_name[len("timm/"):], lr=lr, weight_decay=wd, **kwargs)
        except (ValueError, AssertionError) as e:
            raise ConfigError(f"--opt {opt}: timm cannot create it ({e}).") from e
    elif opt_name == "adamw":
        from .layer_decay import build_param_groups

        groups = build_param_groups(model, lr, wd, **tower_settings)
        optimizer = _adamw(groups, lr=lr, betas=(beta1, beta2), eps=eps)
    else:
        raise ConfigError(f"--opt {opt}: unknown optimizer; use 'adamw' or 'timm/<name>' (e.g. timm/lamb).")
    defaults = dict(optimizer.defaults)
    defaults["weight_decay"] = wd
    logging.info(f"Created {type(optimizer).__name__} ({opt}) optimizer: "
                 + ", ".join(f"{k}: {v}" for k, v in defaults.items()))
    return optimizer


def create_scaler(precision: str, device: str | torch.device, sharded: bool = False):
    """A GradScaler for ``amp`` (float16 autocast) and ``None`` for every other precision
    (``sharded``: the variant for FSDP models, see ``fsdp.ShardedGradScaler``)."""
    if precision != "amp":
        return None
    device_type = torch.device(device).type
    if sharded:
        from .fsdp import ShardedGradScaler

        return ShardedGradScaler(device=device_type)
    try:
        return torch.amp.GradScaler(device=device_type)
    except (AttributeError, TypeError):
        return torch.cuda.amp.GradScaler()
