"""The model an exporter writes: built once, in fp32 on the CPU, with the exact config it was
built from (``ExportSource``).

Every export format needs the same four things: the model in eval mode, the model config with
every setting the weights depend on written out (``quick_gelu``, image size, context length),
the preprocessing, and the tokenizer. ``load_source`` resolves them from a model name (built-in,
``local-dir:`` or ``hf-hub:``) and pretrained tag or file, exactly as ``create_model`` would.
"""

import copy
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from ..config_registry import get_model_config, parse_model_name, unknown_model_message
from .common import ExportError

__all__ = ["ExportSource", "load_source", "source_from_model"]


@dataclass
class ExportSource:
    """A built model with what is needed to rebuild it elsewhere.

    ``model_cfg`` is the architecture dict of ``open_clip_config.json`` (``custom_text`` kept);
    ``preprocess_cfg`` the full preprocessing dict (size, mode, mean, std, interpolation,
    resize_mode, fill_color); ``tokenizer`` the object ``get_tokenizer`` returns.
    """

    model: nn.Module
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    tokenizer: Any
    name: str = ""
    notes: list[str] = field(default_factory=list)


def _tag_quick_gelu(name: str, pretrained: Optional[str]) -> Optional[bool]:
    if not pretrained:
        return None
    from ..pretrained import get_pretrained_cfg

    tag_cfg = get_pretrained_cfg(name, pretrained)
    return tag_cfg.get("quick_gelu") if tag_cfg else None


def _size_value(size: Any) -> Any:
    if isinstance(size, (tuple, list)):
        size = [int(s) for s in size]
        return size[0] if len(size) == 2 and size[0] == size[1] else size
    return int(size)


def _finish_config(cfg: dict[str, Any], model: nn.Module, quick_gelu: bool) -> dict[str, Any]:
    """``cfg`` with the values the built model actually has written in explicitly."""
    cfg = copy.deepcopy(cfg)
    cfg["quick_gelu"] = bool(quick_gelu)
    image_size = getattr(model.visual, "image_size", None)
    vision_cfg = cfg.setdefault("vision_cfg", {})
    if image_size is not None:
        configured = _size_value(vision_cfg.get("image_size", 224))
        if vision_cfg.get("timm_model_name") and _size_value(image_size) != configured:
            raise ExportError(
                "A timm image tower resized with force_image_size cannot be described by open_clip_config.json "
                "(create_model only resizes timm trunks when force_image_size is passed again); export it at its "
                "configured image size."
            )
        vision_cfg["image_size"] = _size_value(image_size)
    text_cfg = cfg.setdefault("text_cfg", {})
    context_length = getattr(model, "context_length", None)
    if context_length and not text_cfg.get("hf_model_name"):
        text_cfg["context_length"] = int(context_length)
    return cfg


def load_source(
    model_name: str,
    pretrained: Optional[str] = None,
    *,
    force_quick_gelu: Optional[bool] = None,
    force_image_size: Optional[Union[int, tuple[int, int]]] = None,
    force_context_length: Optional[int] = None,
    cache_dir: Optional[str] = None,
) -> ExportSource:
    """Build ``model_name`` with ``pretrained`` weights (tag or file) for export.

    ``force_quick_gelu`` None follows the pretrained tag (its weights were trained with that
    activation) and otherwise the config. Raises RuntimeError for unknown names.
    """
    from ..factory import create_model
    from ..tokenizer_config import get_tokenizer

    schema, ident = parse_model_name(model_name)
    lookup = model_name if schema else ident.replace("/", "-")
    raw_cfg = get_model_config(lookup)
    if raw_cfg is None:
        raise RuntimeError(unknown_model_message(lookup))
    quick_gelu = force_quick_gelu
    if quick_gelu is None:
        quick_gelu = _tag_quick_gelu(lookup, pretrained) if not schema else None
    if quick_gelu is None:
        quick_gelu = bool(raw_cfg.get("quick_gelu", False))
    # force_quick_gelu can only switch it on; a tag trained without it switches it off.
    gelu_kwargs: dict[str, Any] = {}
    if quick_gelu != bool(raw_cfg.get("quick_gelu", False)):
        gelu_kwargs = {"force_quick_gelu": True} if quick_gelu else {"quick_gelu": False}
    model = create_model(
        model_name, pretrained, precision="fp32", device="cpu", cache_dir=cache_dir,
        force_image_size=force_image_size, force_context_length=force_context_length,
        require_pretrained=bool(pretrained) and not schema, **gelu_kwargs,
    ).eval()
    cfg = _finish_config(raw_cfg, model, quick_gelu)
    try:
        tokenizer = get_tokenizer(model_name if schema else lookup, context_length=force_context_length,
                                  cache_dir=cache_dir)
    except Exception as e:
        raise RuntimeError(f"Could not build the tokenizer of '{model_name}' for export: {e}") from e
    preprocess_cfg = copy.deepcopy(model.visual.preprocess_cfg)
    return ExportSource(model=model, model_cfg=cfg, preprocess_cfg=preprocess_cfg, tokenizer=tokenizer,
                        name=model_name)


def source_from_model(
    model: nn.Module,
    model_cfg: dict[str, Any],
    tokenizer: Any = None,
    preprocess_cfg: Optional[dict[str, Any]] = None,
    name: str = "",
) -> ExportSource:
    """An ``ExportSource`` for a model you already hold (fp32, any device; moved to the CPU).

    ``model_cfg`` must be the config the model was built from; ``preprocess_cfg`` defaults to
    the one ``create_model`` attached to ``model.visual``.
    """
    from ..models.clip import get_model_preprocess_cfg

    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ExportError("Export needs an fp32 model (build it with precision='fp32'; --precision fp16 "
                          "converts the ONNX graph itself).")
    model = model.cpu().eval()
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    cfg = _finish_config(model_cfg, model, quick_gelu)
    preprocess_cfg = copy.deepcopy(preprocess_cfg or get_model_preprocess_cfg(model))
    return ExportSource(model=model, model_cfg=cfg, preprocess_cfg=preprocess_cfg, tokenizer=tokenizer, name=name)
