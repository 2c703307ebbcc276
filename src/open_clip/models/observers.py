"""Whether user code observes or overrides a module tree, and whether a graph is being captured.

The towers' fast paths (text early stop, pooled-only last block) compute what a plain forward
computes but skip or reshape the calls of some submodules. They may only run when nobody can
tell: no user hook on any module they touch (module-level or global), no ``forward`` replaced on
an instance or overridden by a subclass, no module swapped for another class (a wrapper, a LoRA
layer), and no tracer, compiler or exporter recording the computation. Two machineries are not
observers: FSDP2 (it subclasses the module class without overriding ``forward`` and adds its own
hooks, which the fast paths still trigger by calling blocks through ``__call__``) and torch's
module tracker (used by ``FlopCounterMode``, which should count the path that runs).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

__all__ = ["capturing_graph", "runs_as_defined", "has_user_hooks", "global_user_hooks"]

# Hooks defined in these packages belong to torch machinery that must not disable a fast path.
_MACHINERY_PREFIXES = (
    "torch.distributed.fsdp",
    "torch.distributed._composable",
    "torch.distributed._tools",
    "torch.utils.module_tracker",
)

_MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _is_machinery(hook) -> bool:
    while isinstance(hook, functools.partial):
        hook = hook.func
    target = getattr(hook, "__func__", hook)
    owner = getattr(hook, "__self__", None)
    names = [getattr(target, "__module__", None) or ""]
    if owner is not None:
        names.append(type(owner).__module__)
    return any(name.startswith(_MACHINERY_PREFIXES) for name in names)


def _user_hooks(hook_dicts: Iterable[dict]) -> bool:
    return any(not _is_machinery(hook) for hooks in hook_dicts for hook in hooks.values())


def has_user_hooks(module: nn.Module) -> bool:
    """Whether ``module`` itself (not its children) has a forward or backward hook of user code."""
    return _user_hooks(getattr(module, name) for name in _MODULE_HOOK_DICTS)


def global_user_hooks() -> bool:
    """Whether user code registered a hook on every module (``register_module_forward_hook``...)."""
    return _user_hooks(getattr(_module_globals, name) for name in _GLOBAL_HOOK_DICTS)


def runs_as_defined(module: nn.Module, cls: type) -> bool:
    """Whether calling ``module`` runs ``cls.forward`` unobserved: an instance of ``cls`` (or of a
    subclass that keeps its ``forward``, as FSDP's does), no ``forward`` set on the instance, and
    no user hook on it."""
    return (
        isinstance(module, cls)
        and type(module).forward is cls.forward
        and "forward" not in module.__dict__
        and not has_user_hooks(module)
    )


def capturing_graph() -> bool:
    """Whether the current call is being scripted, traced, compiled or exported: data-dependent
    shapes (which the fast paths use) are not allowed there, and the captured program should be
    the plain one."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None:
        if compiler.is_compiling():
            return True
        is_exporting = getattr(compiler, "is_exporting", None)
        if is_exporting is not None and is_exporting():
            return True
    if torch.onnx.is_in_onnx_export():
        return True
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing

    if is_fx_symbolic_tracing():
        return True
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return get_proxy_mode() is not None
