"""Giving a model built on the meta device real tensors: the towers' initialisation contract.

Owns ``materialize`` and the helpers the towers' ``init_weights`` use.

The contract, for every module of a model:

* ``init_weights()`` (our towers and models) draws every parameter again in the order its
  constructor does, from the global CPU generator, so that ``torch.manual_seed(s)`` + meta build +
  ``materialize`` gives the same values as ``torch.manual_seed(s)`` + a normal build. Modules
  without it are reset with their own ``reset_parameters()`` (children first), which for foreign
  towers (timm, Hugging Face) is a valid but different initialisation.
* ``init_non_persistent_buffers()`` (the name timm uses) refills, in place, buffers that are not
  in the state dict (causal masks, position tables). A module holding such buffers without it
  (itself or an ancestor) cannot be materialised: ``materialize`` raises ``UnsupportedMaterialize``
  naming it, and callers build normally instead.

Values are drawn full size on the CPU and then copied in, shard by shard when a parameter has been
sharded (an FSDP2 ``DTensor``): each rank keeps its slice of exactly the tensor one process would
have drawn, and no rank ever holds more than one full parameter at a time.
"""

import copy
from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

__all__ = [
    "UnsupportedMaterialize",
    "materialize",
    "init_weights",
    "init_non_persistent_buffers",
    "assign",
    "draw",
    "reset_tree",
    "check_buffers_supported",
]


class UnsupportedMaterialize(RuntimeError):
    """A model holds state that cannot be recreated after building on the meta device."""


def assign(target: Optional[torch.Tensor], value: torch.Tensor) -> None:
    """Copy the full-size ``value`` into ``target`` (a plain tensor, or this rank's shard of it)."""
    if target is None:
        return
    with torch.no_grad():
        if _is_dtensor(target):
            from torch.distributed.tensor import distribute_tensor

            value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements)
        target.copy_(value.to(device=target.device, dtype=target.dtype))


def draw(target: Optional[torch.Tensor], init_fn: Callable[[torch.Tensor], object]) -> None:
    """Apply an initialiser (e.g. ``nn.init.normal_``) to a full-size CPU tensor of ``target``'s
    global shape and dtype, then ``assign`` it: the generator is consumed as in-place
    initialisation of ``target`` itself would on one process."""
    if target is None:
        return
    value = torch.empty(tuple(target.shape), dtype=_init_dtype(target))
    init_fn(value)
    assign(target, value)


def _init_dtype(tensor: torch.Tensor) -> torch.dtype:
    # Towers are initialised in float32 and cast afterwards (precision rules): draw the same values.
    return torch.float32 if tensor.is_floating_point() else tensor.dtype


def _is_dtensor(tensor: torch.Tensor) -> bool:
    return type(tensor).__name__ == "DTensor"


def _reset_own(module: nn.Module) -> None:
    """``module.reset_parameters()`` on a scratch copy holding full-size CPU tensors, copied in."""
    reset = getattr(module, "reset_parameters", None)
    if reset is None:
        return
    tensors = [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]
    if not any(_is_dtensor(t) or t.dtype != _init_dtype(t) for t in tensors):
        reset()
        return
    scratch = copy.copy(module)
    scratch._parameters = {
        n: None if p is None else nn.Parameter(torch.empty(tuple(p.shape), dtype=_init_dtype(p)), p.requires_grad)
        for n, p in module._parameters.items()
    }
    scratch._buffers = {
        n: None if b is None else torch.empty(tuple(b.shape), dtype=_init_dtype(b)) for n, b in module._buffers.items()
    }
    scratch.reset_parameters()
    for name, value in (*scratch._parameters.items(), *scratch._buffers.items()):
        if value is not None:
            assign(getattr(module, name), value)


def reset_tree(module: Optional[nn.Module]) -> None:
    """Initialise ``module`` as its constructor does: its own ``init_weights`` when it has one,
    else its children in registration order, then its own ``reset_parameters``."""
    if module is None:
        return
    own_init = getattr(module, "init_weights", None)
    if callable(own_init):
        own_init()
        return
    if isinstance(module, nn.MultiheadAttention):
        # its constructor builds out_proj (default Linear init) before drawing the input projection
        _reset_own(module.out_proj)
        scratch_free = not any(_is_dtensor(p) or p.dtype != _init_dtype(p) for p in module.parameters())
        if scratch_free:
            module._reset_parameters()
        else:
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                draw(getattr(module, name), nn.init.xavier_uniform_)
            for name in ("in_proj_bias",):
                draw(getattr(module, name), nn.init.zeros_)
            draw(module.out_proj.bias, nn.init.zeros_)
            for name in ("bias_k", "bias_v"):
                draw(getattr(module, name), nn.init.xavier_normal_)
        return
    for child in module.children():
        reset_tree(child)
    _reset_own(module)


def init_weights(model: nn.Module) -> None:
    """Draw all of ``model``'s parameters as its constructor does (see the module docstring)."""
    reset_tree(model)


def _modules_needing_buffers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if getattr(m, "_non_persistent_buffers_set", None)]


def _has_buffer_init(model: nn.Module, name: str) -> bool:
    parts = name.split(".") if name else []
    for depth in range(len(parts), -1, -1):
        owner = model.get_submodule(".".join(parts[:depth]))
        if callable(getattr(owner, "init_non_persistent_buffers", None)):
            return True
    return False


def check_buffers_supported(model: nn.Module) -> None:
    """Raise ``UnsupportedMaterialize`` unless every non-persistent buffer has an initialiser,
    and no plain tensor attribute would be left on the meta device."""
    missing = [
        name or type(m).__name__ for name, m in _modules_needing_buffers(model) if not _has_buffer_init(model, name)
    ]
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.is_meta:
                missing.append(f"{name}.{attr}" if name else attr)
    if missing:
        raise UnsupportedMaterialize(
            f"cannot recreate non-persistent state of {', '.join(missing)} after a meta-device build "
            "(no init_non_persistent_buffers())"
        )


def init_non_persistent_buffers(model: nn.Module) -> None:
    """Refill every non-persistent buffer in place (modules that define the initialiser)."""
    for module in model.modules():
        init = getattr(module, "init_non_persistent_buffers", None)
        if callable(init):
            init()


def _allocate(model: nn.Module, device: torch.device) -> None:
    """Give every tensor still on the meta device uninitialised memory on ``device``."""
    tensors = [*model.parameters(), *model.buffers()]
    if tensors and all(t.is_meta for t in tensors):
        model.to_empty(device=device)  # also right for FSDP2's sharded parameters
        return
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None and param.is_meta:
                module._parameters[name] = nn.Parameter(
                    torch.empty_like(param, device=device), requires_grad=param.requires_grad
                )
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_meta:
                module._buffers[name] = torch.empty_like(buf, device=device)


def materialize(model: nn.Module, device: torch.device | str = "cpu", init: bool = True) -> nn.Module:
    """Allocate ``model``'s meta tensors on ``device``; with ``init``, draw the parameters as the
    constructor does (``init_weights``); refill the non-persistent buffers. Tensors that are
    already real (e.g. assigned from a checkpoint) keep their values unless ``init``."""
    check_buffers_supported(model)
    _allocate(model, torch.device(device))
    if init:
        init_weights(model)
    init_non_persistent_buffers(model)
    return model
