"""Checkpoints of sharded (``--fsdp``) runs, and loading any checkpoint into any kind of run.

Owns the ``<name>.dcp/`` folder written beside ``<name>.pt``: the sharded model and optimizer
saved with ``torch.distributed.checkpoint`` (DCP), every rank writing its own shards, so that no
rank ever gathers the whole optimizer. The ``.pt`` file keeps 3.3's keys with the model weights
consolidated on rank 0 (``create_model_and_transforms(pretrained=...)`` and 3.3 load it) and the
resume keys of ``checkpoint``, but no optimizer.

Crash safety: the folder is written under a temporary name and renamed into place, and the ``.pt``
file is written after it: a ``.pt`` whose folder exists points at a complete folder.

Loading (``restore_model_and_optimizer``): a ``.pt`` with a ``.dcp`` folder beside it restores
model and optimizer from the folder (DCP reshards: any world size, sharded or not); a plain ``.pt``
(DDP runs, 3.3) restores into a sharded model from the full state, its optimizer state mapped
parameter by parameter.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch
import torch.distributed as dist

from .errors import CheckpointWriteError, ConfigError

DCP_SUFFIX = ".dcp"


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards (DTensors)."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def dcp_path(pt_path: str) -> str:
    """The sharded-state folder that belongs to the checkpoint file ``pt_path``."""
    return (pt_path[:-3] if pt_path.endswith(".pt") else pt_path) + DCP_SUFFIX


def _options(**kwargs: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state dict on the CPU of rank 0 (empty elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(full_state_dict=True, cpu_offload=True))


def _states(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    states: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        states["optimizer"] = get_optimizer_state_dict(model, optimizer)
    return states


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_sharded(model: torch.nn.Module, optimizer: Any, pt_path: str) -> None:
    """Write the model's and optimizer's shards to ``dcp_path(pt_path)`` (every rank calls it).

    A failed write leaves any previous folder in place and raises :class:`CheckpointWriteError`."""
    import torch.distributed.checkpoint as dcp

    target = dcp_path(pt_path)
    staging = target + ".tmp"
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run that died while saving
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    _barrier()
    try:
        dcp.save(_states(model, optimizer), checkpoint_id=staging)
    except (OSError, RuntimeError) as e:
        cause = e if isinstance(e, OSError) else OSError(5, str(e).strip().splitlines()[0] if str(e) else repr(e))
        raise CheckpointWriteError(target, cause) from e
    _barrier()
    if rank == 0:
        retired = target + ".old"
        shutil.rmtree(retired, ignore_errors=True)
        if os.path.exists(target):
            os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    _barrier()


def remove_sharded(pt_path: str) -> None:
    """Delete the folder that belongs to a deleted checkpoint file (if any)."""
    shutil.rmtree(dcp_path(pt_path), ignore_errors=True)


def _load_dcp(model: torch.nn.Module, optimizer: Any, folder: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    states = _states(model, optimizer)
    dcp.load(states, checkpoint_id=folder)
    set_model_state_dict(model, states["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, states["optimizer"])


def _named_parameters(model: torch.nn.Module) -> dict[int, str]:
    module = model.module if hasattr(model, "module") else model
    return {id(p): name for name, p in module.named_parameters()}


def fqn_optimizer_state(saved: dict, optimizer: Any, model: torch.nn.Module) -> dict:
    """A ``torch.optim`` state dict keyed by parameter index (as DDP runs save it) re-keyed by
    parameter name, matching the saved groups to ``optimizer``'s groups position by position."""
    names = _named_parameters(model)
    groups, saved_groups = optimizer.param_groups, saved["param_groups"]
    if len(groups) != len(saved_groups) or any(
        len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)
    ):
        raise ValueError(
            f"the saved optimizer has groups of {[len(s['params']) for s in saved_groups]} parameters, this one "
            f"{[len(g['params']) for g in groups]}"
        )
    key_to_name = {}
    for group, saved_group in zip(groups, saved_groups):
        for param, key in zip(group["params"], saved_group["params"]):
            key_to_name[key] = names[id(param)]
    state = {key_to_name[k]: v for k, v in saved["state"].items()}
    param_groups = [
        {**saved_group, "params": [key_to_name[k] for k in saved_group["params"]]} for saved_group in saved_groups
    ]
    return {"state": state, "param_groups": param_groups}


def _load_full_into_sharded(model: torch.nn.Module, optimizer: Any, checkpoint: dict, model_state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, model_state, options=_options(full_state_dict=True))
    if optimizer is not None and "optimizer" in checkpoint:
        full = fqn_optimizer_state(checkpoint["optimizer"], optimizer, model)
        set_optimizer_state_dict(model, optimizer, full, options=_options(full_state_dict=True))


def restore_model_and_optimizer(
    path: str | None, checkpoint: dict, model: torch.nn.Module, optimizer: Any, model_state: dict
) -> bool:
    """Restore ``model`` (and ``optimizer``) from a checkpoint that involves sharding: one with a
    ``.dcp`` folder, or any checkpoint resumed by a sharded model. Returns False when neither
    applies (the caller restores a plain model from the file). ``path``: the checkpoint file (None:
    a checkpoint held in memory, with no folder); ``model_state``: its model weights, prefixes
    already matched."""
    folder = dcp_path(path) if path is not None else None
    try:
        if folder is not None and os.path.isdir(folder):
            _load_dcp(model, optimizer, folder)
            return True
        if is_sharded(model):
            _load_full_into_sharded(model, optimizer, checkpoint, model_state)
            return True
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"--resume {path or 'checkpoint'}: checkpoint does not match the model or optimizer ({first}). "
            "Use the same --model, --opt and lock flags as the run that saved it."
        ) from e
    return False
