"""Small helpers shared by the towers: tuple coercion, BatchNorm freezing, Linear replacement,
int8 inference conversion and feature-index selection for ``forward_intermediates``."""

import collections.abc
from collections.abc import Callable
from itertools import repeat
from typing import Optional, Union

import torch
from torch import nn

__all__ = [
    "freeze_batch_norm_2d",
    "to_1tuple",
    "to_2tuple",
    "to_3tuple",
    "to_4tuple",
    "to_ntuple",
    "replace_linear",
    "convert_int8_model_to_inference_mode",
    "feature_take_indices",
]


def freeze_batch_norm_2d(module: nn.Module, module_match: Optional[dict] = None, name: str = "") -> nn.Module:
    """Replace BatchNorm2d / SyncBatchNorm layers by torchvision ``FrozenBatchNorm2d``.

    Args:
        module: the module (or BN layer) to convert.
        module_match: if non-empty, only layers whose dotted full name is in it are converted.
        name: dotted full name of ``module`` (used for matching while recursing).

    Returns:
        The converted module: a new FrozenBatchNorm2d when ``module`` itself is a matching BN,
        otherwise ``module`` with its children replaced in place.
    """
    from torchvision.ops.misc import FrozenBatchNorm2d

    module_match = module_match or {}
    is_match = not module_match or name in module_match
    if is_match and isinstance(module, (nn.modules.batchnorm.BatchNorm2d, nn.modules.batchnorm.SyncBatchNorm)):
        frozen = FrozenBatchNorm2d(module.num_features)
        frozen.num_features = module.num_features
        frozen.affine = module.affine
        if module.affine:
            frozen.weight.data = module.weight.data.clone().detach()
            frozen.bias.data = module.bias.data.clone().detach()
        # running stats are shared (not copied), as in 3.3
        frozen.running_mean.data = module.running_mean.data
        frozen.running_var.data = module.running_var.data
        frozen.eps = module.eps
        return frozen
    for child_name, child in module.named_children():
        full_name = f"{name}.{child_name}" if name else child_name
        new_child = freeze_batch_norm_2d(child, module_match, full_name)
        if new_child is not child:
            module.add_module(child_name, new_child)
    return module


def _ntuple(n: int) -> Callable:
    def parse(x):
        # any iterable (a list from JSON, even a str) is returned unchanged
        if isinstance(x, collections.abc.Iterable):
            return x
        return tuple(repeat(x, n))

    return parse


to_1tuple = _ntuple(1)
to_2tuple = _ntuple(2)
to_3tuple = _ntuple(3)
to_4tuple = _ntuple(4)


def to_ntuple(n: int, x):
    """Repeat a scalar ``x`` ``n`` times; iterables are returned unchanged."""
    return _ntuple(n)(x)


def replace_linear(
    model: nn.Module,
    linear_replacement: Callable,
    include_modules: Optional[list[str]] = None,
    copy_weights: bool = True,
) -> nn.Module:
    """Recursively replace ``nn.Linear`` children named in ``include_modules`` (default
    ``['c_fc', 'c_proj']``) by ``linear_replacement(in_features, out_features, has_bias)``."""
    if include_modules is None:
        include_modules = ["c_fc", "c_proj"]
    for child_name, child in model.named_children():
        if len(list(child.children())) > 0:
            replace_linear(child, linear_replacement, include_modules, copy_weights)
        if isinstance(child, nn.Linear) and child_name in include_modules:
            old = child
            new = linear_replacement(old.in_features, old.out_features, old.bias is not None)
            if copy_weights:
                new.weight.data.copy_(old.weight.data)
                if new.bias is not None:
                    new.bias.data.copy_(old.bias)
            model._modules[child_name] = new
    return model


def convert_int8_model_to_inference_mode(model: nn.Module) -> None:
    """Call ``prepare_for_eval()`` on every module that has it, remembering the original weight
    dtype in ``int8_original_dtype`` (read back by ``get_weight_dtype``)."""
    for m in model.modules():
        if hasattr(m, "prepare_for_eval"):
            int8_original_dtype = m.weight.dtype
            m.prepare_for_eval()
            m.int8_original_dtype = int8_original_dtype


def feature_take_indices(
    num_features: int,
    indices: Optional[Union[int, list[int], tuple[int, ...]]] = None,
    as_set: bool = False,
) -> tuple[Union[list[int], set[int]], int]:
    """Resolve ``forward_intermediates`` indices.

    Args:
        num_features: number of selectable features (blocks / stages).
        indices: None → all; int n → the last n; sequence → those indices (negatives count
            from the end).
        as_set: return a set instead of a list (not while scripting).

    Returns:
        (indices, max_index)
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        torch._assert(
            0 < indices <= num_features,
            f"last-n ({indices}) is out of range (1 to {num_features})",
        )
        take_indices = [num_features - indices + i for i in range(indices)]
    else:
        take_indices = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            torch._assert(0 <= idx < num_features, f"feature index {idx} is out of range (0 to {num_features - 1})")
            take_indices.append(idx)
    if not torch.jit.is_scripting() and as_set:
        return set(take_indices), max(take_indices)
    return take_indices, max(take_indices)


def _out_indices_as_tuple(x: Union[int, tuple[int, ...]]) -> tuple[int, ...]:
    if isinstance(x, int):
        # an int n means the last n feature levels
        return tuple(range(-x, 0))
    return tuple(x)
