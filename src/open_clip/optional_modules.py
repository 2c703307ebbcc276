"""Module attributes bound to optional packages, imported when first read.

3.3 imported optional packages at module import time and kept them as module attributes
(``open_clip.loss.hvd``, ``open_clip_train.main.wandb``, ``.tensorboard``, ``open_clip_train.profiler.fvcore``):
the package module, or None when it is not installed. Code written against 3.3 reads or patches these
names. Importing wandb, tensorboard or horovod costs seconds, so here the import waits until the
attribute is first read; the attribute then becomes a plain module global and is listed by ``dir()``
from the start, as in 3.3.
"""

import importlib
import sys
from collections.abc import Callable
from typing import Any


def optional_module_attributes(
    module_name: str, attributes: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` for module ``module_name``.

    Args:
        module_name: the calling module's ``__name__``.
        attributes: attribute name -> dotted package module to import on first read, e.g.
            ``{"hvd": "horovod.torch"}``. A package that is not installed reads as None.

    Use at module level: ``__getattr__, __dir__ = optional_module_attributes(__name__, {...})``.
    """

    def __getattr__(name: str) -> Any:
        target = attributes.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        try:
            value = importlib.import_module(target)
        except ImportError:
            value = None
        # Cache as a real global: later reads are plain lookups and mock.patch restores cleanly.
        setattr(sys.modules[module_name], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[module_name])) | set(attributes))

    return __getattr__, __dir__
