"""Sharded training with FSDP2 (``--fsdp``): building the model on the meta device, sharding it, and
giving each rank its shard directly.

Owns ``build_sharded_model`` (meta build -> locks -> ``fully_shard`` -> per-shard materialisation or
a checkpoint's weights), ``shard_units`` (which modules become FSDP units), ``ensure_process_group``
(a world of one when started without torchrun) and the handling of scalar parameters.

Order, as in torchtitan: locks and activation checkpointing are set on the meta model, then every
block is sharded, then the root. Parameters FSDP2 cannot shard (0-dim: ``logit_scale`` /
``logit_bias`` of most configs) stay replicated; their gradients are averaged across ranks by a
hook, as FSDP averages the others. ``encode_image`` / ``encode_text`` are registered as forward
methods so that evaluation and zero-shot classification unshard the root like ``forward`` does.
Mixed precision follows the ``--precision`` rules unchanged (autocast for ``amp*``, 16-bit weights
for ``pure_*``): the parameters FSDP gathers keep the dtypes the model was built with, so norms and
the logit scale stay float32 as without FSDP.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError

_BLOCK_CONTAINERS = ("blocks", "stages", "layer", "layers", "resblocks", "cross_attn")


def ensure_process_group(args: Any, device: torch.device) -> None:
    """FSDP needs a process group: form a world of one when the run was not started by torchrun."""
    if dist.is_available() and dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    logging.info("--fsdp without torchrun: running as a world of 1.")


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one: each residual block of every tower (native blocks, ResNet
    bottlenecks, the children of timm's ``blocks`` / ``stages`` and of Hugging Face encoders'
    ``layer`` lists), innermost first so that FSDP units do not nest."""
    from open_clip.models.attention import CustomResidualAttentionBlock, ResidualAttentionBlock
    from open_clip.models.modified_resnet import Bottleneck

    native = (ResidualAttentionBlock, CustomResidualAttentionBlock, Bottleneck)
    units: list[nn.Module] = [m for m in model.modules() if isinstance(m, native)]
    seen = {id(m) for m in units}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or name.rsplit(".", 1)[-1] not in _BLOCK_CONTAINERS:
            continue
        for child in module.children():
            if id(child) not in seen and not any(id(m) in seen for m in child.modules()):
                units.append(child)
                seen.add(id(child))
    return units


def _average_grad(world_size: int):
    def hook(param: torch.Tensor) -> None:
        if param.grad is not None:
            dist.all_reduce(param.grad)  # gloo has no AVG: sum, then divide
            param.grad.div_(world_size)

    return hook


def apply_fsdp(model: nn.Module) -> nn.Module:
    """Shard every unit of ``shard_units``, then the root (in place); returns the model."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for unit in shard_units(model):
        fully_shard(unit)
    scalars = {p for p in model.parameters() if p.dim() == 0}
    fully_shard(model, ignored_params=scalars or None)
    world = dist.get_world_size()
    for param in scalars:
        if param.requires_grad and world > 1:
            param.register_post_accumulate_grad_hook(_average_grad(world))
    for method in ("encode_image", "encode_text"):
        if hasattr(model, method):
            register_fsdp_forward_method(model, method)
    return model


class ShardedGradScaler(torch.amp.GradScaler):
    """The ``amp`` GradScaler for sharded models: gradients that are shards (DTensors) and plain
    ones (the replicated scalar parameters) are unscaled and checked in separate lists. torch's
    kernel, given a list of shards, reduces the overflow flag over the ranks holding them (every
    rank then skips or steps alike), and it refuses lists that mix the two kinds."""

    def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16):  # noqa: D102 (GradScaler hook)
        lists: dict = {}
        for group in optimizer.param_groups:
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if not allow_fp16 and grad.dtype == torch.float16:
                    raise ValueError("Attempting to unscale FP16 gradients.")
                key = (grad.device, grad.dtype, type(grad).__name__ == "DTensor")
                lists.setdefault(key, []).append(grad)
        found_per_device: dict = {}
        with torch.no_grad():
            for (device, _, _), grads in lists.items():
                if device not in found_per_device:
                    found_per_device[device] = found_inf.to(device, copy=True)
                torch._amp_foreach_non_finite_check_and_unscale_(
                    grads, found_per_device[device], inv_scale.to(device)
                )
        if not found_per_device:
            found_per_device[found_inf.device] = found_inf
        return found_per_device


def _create(args: Any, device: torch.device, load_weights: bool) -> tuple:
    from .model_setup import create_models

    return create_models(args, device, load_weights=load_weights, teacher=False)


def _loads_weights(args: Any) -> bool:
    """Whether building ``--model`` normally could load weights: ``--pretrained``, a folder or Hub
    model (which may hold weights), or a pretrained timm / Hugging Face tower."""
    from open_clip.config_registry import get_model_config
    from open_clip.factory import parse_model_name

    if args.pretrained or args.pretrained_image:
        return True
    schema, name = parse_model_name(args.model)
    if schema is not None:
        return True
    cfg = get_model_config(name.replace("/", "-")) or {}
    return bool(cfg.get("text_cfg", {}).get("hf_model_name"))


def build_sharded_model(args: Any, device: torch.device, lock: Any) -> tuple:
    """``(model, preprocess_train, preprocess_val)`` for ``--fsdp``: built on the meta device,
    locked (``lock(model)``), sharded, then given real shards. When a normal build could load
    weights (``_loads_weights``), rank 0 builds the model normally (with the run's seed, so an
    absent checkpoint gives the same random init) and its weights are broadcast; otherwise every
    rank draws the seeded random initialisation for its own shards, equal to a normal build's.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from open_clip.models.materialize import UnsupportedMaterialize, init_non_persistent_buffers, init_weights

    pretrained = _loads_weights(args)
    rank = dist.get_rank()
    with torch.device("meta"):
        model, preprocess_train, preprocess_val, _ = _create(args, torch.device("meta"), load_weights=False)
    full_state = None
    if pretrained and rank == 0:
        loaded, _, _, _ = _create(args, torch.device("cpu"), load_weights=True)
        full_state = loaded.state_dict()
        del loaded
    lock(model)
    apply_fsdp(model)
    model.to_empty(device=device)
    try:
        if pretrained:
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_model_state_dict(model, full_state if rank == 0 else {}, options=options)
        else:
            torch.manual_seed(args.seed)  # the same draws on every rank: each keeps its own slice
            init_weights(model)
        init_non_persistent_buffers(model)
    except UnsupportedMaterialize as e:
        raise ConfigError(f"--fsdp: {e}") from e
    return model, preprocess_train, preprocess_val

