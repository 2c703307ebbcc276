"""Model-side setup for training: create student/teacher, lock towers, wrap for DDP, build the loss."""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
import torch

from .errors import ConfigError


def _create(model_name: str, flag: str, **kwargs) -> tuple:
    from open_clip.factory import create_model_and_transforms

    try:
        return create_model_and_transforms(model_name, **kwargs)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{flag} {model_name}: cannot create this model ({first}). "
                          "Use a name from open_clip.list_models(), 'local-dir:<path>' or 'hf-hub:<repo>'.") from e


def create_models(args, device: torch.device, load_weights: bool = True,
                  teacher: bool = True) -> tuple[Any, Any, Any, Any]:
    """``(model, preprocess_train, preprocess_val, teacher_or_None)`` from the model flags
    (``load_weights=False``: the configuration ``--pretrained`` implies, without its weights;
    ``teacher=False``: no distillation teacher)."""
    extra = {}
    if args.siglip:
        extra = {"init_logit_scale": np.log(10), "init_logit_bias": -10}
    model, preprocess_train, preprocess_val = _create(
        args.model, "--model",
        pretrained=args.pretrained,
        load_weights=load_weights,
        precision=args.precision,
        device=device,
        jit=args.torchscript,
        force_quick_gelu=args.force_quick_gelu,
        force_custom_text=args.force_custom_text,
        force_patch_dropout=args.force_patch_dropout,
        force_image_size=args.force_image_size,
        force_context_length=args.force_context_length,
        image_mean=args.image_mean,
        image_std=args.image_std,
        image_interpolation=args.image_interpolation,
        image_resize_mode=args.image_resize_mode,
        aug_cfg=args.aug_cfg,
        pretrained_image=args.pretrained_image,
        output_dict=True,
        cache_dir=args.cache_dir,
        **extra,
    )
    dist_model = create_teacher(args, device) if args.distill and teacher else None
    return model, preprocess_train, preprocess_val, dist_model


def create_teacher(args, device: torch.device) -> Any:
    """The distillation teacher (``--distill-model`` / ``--distill-pretrained``)."""
    dist_model, _, _ = _create(
        args.distill_model, "--distill-model",
        pretrained=args.distill_pretrained,
        device=device,
        precision=args.precision,
        output_dict=True,
        cache_dir=args.cache_dir,
    )
    return dist_model


def replace_with_bnb_linear(model: torch.nn.Module, class_name: str, device: torch.device) -> torch.nn.Module:
    """Swap MLP linears for a bitsandbytes ``triton_based_modules`` class (``--use-bnb-linear``)."""
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ConfigError(f"--use-bnb-linear {class_name}: needs the `bitsandbytes` package, which is not "
                          "installed (pip install bitsandbytes).") from e
    from open_clip.utils import replace_linear

    modules = getattr(bnb.nn, "triton_based_modules", None)
    if modules is None:  # bitsandbytes 0.50 removed the SwitchBack layers
        version = getattr(bnb, "__version__", "?")
        raise ConfigError(f"--use-bnb-linear {class_name}: bitsandbytes {version} no longer has the SwitchBack "
                          "layers (bitsandbytes.nn.triton_based_modules); pip install 'bitsandbytes<0.50'.")
    layer = getattr(modules, class_name, None)
    target = layer.func if isinstance(layer, functools.partial) else layer  # SwitchBackLinearGlobal is a partial
    if not (isinstance(target, type) and issubclass(target, torch.nn.Linear)):
        raise ConfigError(f"--use-bnb-linear {class_name}: not a bitsandbytes triton module; "
                          "try SwitchBackLinearGlobal or SwitchBackLinearGlobalMemEfficient.")
    logging.info("=> using a layer from bitsandbytes.\n"
                 "   this is an experimental feature which is not yet fully supported.")
    try:
        return replace_linear(model, layer).to(device)
    except ImportError as e:  # the layers check for triton when built
        raise ConfigError(f"--use-bnb-linear {class_name}: bitsandbytes could not load triton ({e}); "
                          "pip install triton.") from e


def apply_locks(model: torch.nn.Module, args) -> None:
    """``--lock-image*`` / ``--lock-text*`` / ``--grad-checkpointing`` on the (unwrapped) model."""
    if args.lock_image:
        if hasattr(model, "lock_image_tower"):
            model.lock_image_tower(unlocked_groups=args.lock_image_unlocked_groups,
                                   freeze_bn_stats=args.lock_image_freeze_bn_stats)
        elif hasattr(getattr(model, "visual", None), "lock"):
            model.visual.lock(unlocked_groups=args.lock_image_unlocked_groups,
                              freeze_bn_stats=args.lock_image_freeze_bn_stats)
        else:
            raise ConfigError(f"--lock-image: model {args.model} has no lockable image tower; drop the flag.")
    if args.lock_text:
        _lock_text(model, args)
    if args.grad_checkpointing:
        model.set_grad_checkpointing()


def _lock_text(model: torch.nn.Module, args) -> None:
    unlocked, freeze_ln = args.lock_text_unlocked_layers, args.lock_text_freeze_layer_norm
    if hasattr(model, "lock_text_tower"):
        target = model.lock_text_tower
    elif hasattr(getattr(model, "text", None), "lock"):
        target = model.text.lock
    else:
        raise ConfigError(f"--lock-text: model {args.model} has no lockable text tower; drop the flag.")
    try:
        target(unlocked_layers=unlocked, freeze_layer_norm=freeze_ln)
    except AssertionError:
        # 3.3's built-in text towers assert freeze_layer_norm although their LayerNorms are locked
        # like every other weight anyway; without the flag the same lock is what the user gets.
        target(unlocked_layers=unlocked, freeze_layer_norm=True)


def wrap_ddp(model: torch.nn.Module, args, device: torch.device) -> torch.nn.Module:
    """DDP wrapper (SyncBatchNorm first with ``--use-bn-sync``); CPU/gloo gets ``device_ids=None``."""
    if args.use_bn_sync:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp_args = {"static_graph": True} if args.ddp_static_graph else {}
    device_ids = None if device.type == "cpu" else [device]
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_args)


def build_loss(args, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """3.3's loss precedence (distill, CoCa, SigLIP, CLIP) with ``--loss-chunk-size`` as ``chunk_size``."""
    from open_clip.loss import build_loss as _build_loss

    model_name = args.model
    if model is not None and type(model).__name__ == "CoCa" and "coca" not in model_name.lower():
        model_name = "coca:" + model_name  # a CoCa built from a file/hub name still gets the CoCa loss
    try:
        return _build_loss(
            model_name=model_name, distill=args.distill, siglip=args.siglip, local_loss=args.local_loss,
            gather_with_grad=args.gather_with_grad, rank=args.rank, world_size=args.world_size,
            use_horovod=args.horovod, coca_caption_loss_weight=args.coca_caption_loss_weight,
            coca_contrastive_loss_weight=args.coca_contrastive_loss_weight, dist_impl=args.loss_dist_impl,
            chunk_size=args.loss_chunk_size)
    except (ValueError, ImportError) as e:
        flag = "--loss-chunk-size" if args.loss_chunk_size else ("--loss-dist-impl" if args.siglip else "--model")
        raise ConfigError(f"{flag}: cannot build the loss ({e}).") from e
