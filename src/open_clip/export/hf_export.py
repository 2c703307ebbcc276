"""``export_hf``: an open_clip model as a transformers folder (``CLIPModel`` or ``SiglipModel``
+ processor files), loaded back and checked against our features.

SigLIP-style models (a logit bias and a timm SigLIP ViT image tower) become ``SiglipModel``; other
models ``CLIPModel``. Anything the target cannot represent raises ExportError naming it.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..utils import to_2tuple
from .common import ExportError, require
from .hf_clip import clip_to_hf
from .hf_processor import check_processor, save_processor
from .hf_siglip import is_siglip_model, siglip_to_hf
from .source import ExportSource, load_source

__all__ = ["HFExport", "export_hf", "export_hf_from_source", "hf_features"]

_ATOL = 1e-4


@dataclass
class HFExport:
    """What ``export_hf`` wrote: the folder, the transformers class name, and the max abs
    difference of image / text features against ours (when verified)."""

    output_dir: Path
    model_class: str
    max_abs_diff: dict[str, float] = field(default_factory=dict)


def _features(output: Any) -> torch.Tensor:
    # transformers >= 5 returns an output object whose pooler_output holds the projected features
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def hf_features(hf_model: nn.Module, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features, text features) of a transformers CLIPModel / SiglipModel."""
    with torch.no_grad():
        return (_features(hf_model.get_image_features(pixel_values=images)),
                _features(hf_model.get_text_features(input_ids=text)))


def _check_loading(transformers, folder: Path, model_class: str) -> nn.Module:
    """Load the folder as transformers would; ExportError if any key is missing or unexpected."""
    cls = getattr(transformers, model_class)
    model, info = cls.from_pretrained(str(folder), output_loading_info=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise ExportError(f"{model_class}.from_pretrained({folder}) reports {problems}; please report this.")
    return model.eval()


def _verify(ours: nn.Module, theirs: nn.Module) -> dict[str, float]:
    height, width = to_2tuple(ours.visual.image_size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, height, width, generator=generator)
    vocab = getattr(ours, "vocab_size", 1000)
    text = torch.randint(1, vocab, (3, ours.context_length), generator=generator)
    text[:, -1] = vocab - 1  # an end token for the eos / argmax pooling rules
    with torch.no_grad():
        image_ref = ours.encode_image(images, normalize=False)
        text_ref = ours.encode_text(text, normalize=False)
    image_hf, text_hf = hf_features(theirs, images, text)
    diffs = {"image": (image_hf - image_ref).abs().max().item(), "text": (text_hf - text_ref).abs().max().item()}
    bad = {k: v for k, v in diffs.items() if not v <= _ATOL}
    if bad:
        raise ExportError(f"transformers features differ from open_clip's by {bad} (> {_ATOL}); please report this.")
    return diffs


def export_hf_from_source(source: ExportSource, output_dir: Union[str, Path], *, verify: bool = True) -> HFExport:
    """Write ``source`` as a transformers folder (model, config, processor files).

    Raises ExportError naming any feature the transformers class cannot represent.
    """
    transformers = require("transformers", "Hugging Face transformers export")
    model = source.model.eval()
    siglip = is_siglip_model(model)
    if siglip:
        config_kwargs, state_dict = siglip_to_hf(model)
        model_class, config = "SiglipModel", transformers.SiglipConfig(**config_kwargs)
    else:
        config_kwargs, state_dict = clip_to_hf(model)
        model_class, config = "CLIPModel", transformers.CLIPConfig(**config_kwargs)
    check_processor(source.tokenizer, source.preprocess_cfg)  # refusals come before anything is written
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_processor(source.tokenizer, source.preprocess_cfg, model.context_length, out, siglip=siglip)
    hf_model = getattr(transformers, model_class)(config)
    result = hf_model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExportError(f"{model_class} keys do not match the conversion (missing {result.missing_keys}, "
                          f"unexpected {result.unexpected_keys}); please report this.")
    hf_model.save_pretrained(str(out))
    export = HFExport(output_dir=out, model_class=model_class)
    if verify:
        export.max_abs_diff = _verify(model, _check_loading(transformers, out, model_class))
    return export


def export_hf(
    model_name: str,
    pretrained: Optional[str],
    output_dir: Union[str, Path],
    *,
    verify: bool = True,
    force_quick_gelu: Optional[bool] = None,
    cache_dir: Optional[str] = None,
) -> HFExport:
    """Build ``model_name`` with ``pretrained`` weights and write a transformers folder
    (see ``export_hf_from_source``)."""
    source = load_source(model_name, pretrained, force_quick_gelu=force_quick_gelu, cache_dir=cache_dir)
    return export_hf_from_source(source, output_dir, verify=verify)

