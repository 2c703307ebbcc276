"""Processor files for a transformers folder: a tokenizer that gives our ids and an image
processor configured like our eval transform (``CLIPProcessor`` / ``SiglipProcessor``).

Known gaps, both from transformers' own image code: its centre crop floors an odd margin where
torchvision rounds it (a one-pixel shift when the resized long side exceeds the crop by 4k+1
pixels), and it converts palette ('P') images to RGB before resizing where OpenCLIP resizes first.
The CLIP BPE tokenizer pads with ``<end_of_text>`` here (transformers needs a pad token that cannot
occur in text); ids up to the end token equal ours and features do not depend on padding.
"""

import json
import tempfile
from pathlib import Path
from typing import Any, Union

from ..tokenizer import SimpleTokenizer
from ..utils import to_2tuple
from .common import ExportError
from .tokenizer_json import TOKENIZER_FILE, build_clip_tokenizer, unsupported_reason

__all__ = ["check_processor", "image_processor_kwargs", "save_processor"]

_RESAMPLE = {"bicubic": 3, "bilinear": 2, "random": 3}  # PIL codes; 'random' is bicubic at eval


def image_processor_kwargs(preprocess_cfg: dict[str, Any]) -> dict[str, Any]:
    """``CLIPImageProcessor`` arguments reproducing our eval transform (ExportError if impossible)."""
    height, width = to_2tuple(preprocess_cfg.get("size", 224))
    mode = preprocess_cfg.get("resize_mode", "shortest")
    common = {
        "image_mean": list(preprocess_cfg["mean"]), "image_std": list(preprocess_cfg["std"]),
        "resample": _RESAMPLE[preprocess_cfg.get("interpolation", "bicubic")],
        "do_convert_rgb": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    }
    if mode == "squash":
        return {**common, "do_resize": True, "size": {"height": height, "width": width}, "do_center_crop": False}
    if mode == "shortest" and height == width:
        return {**common, "do_resize": True, "size": {"shortest_edge": height}, "do_center_crop": True,
                "crop_size": {"height": height, "width": width}}
    what = "resize_mode='longest' (fit and pad)" if mode == "longest" else f"a non-square crop ({height}x{width})"
    raise ExportError(f"transformers' image processors cannot reproduce preprocess_cfg {what}")


def check_processor(tokenizer: Any, preprocess_cfg: dict[str, Any]) -> None:
    """Raise ExportError, before anything is written, if the processor files cannot be made."""
    if tokenizer is None:
        raise ExportError("A tokenizer is needed to write the processor files")
    reason = unsupported_reason(tokenizer)
    if reason:
        raise ExportError(f"The tokenizer cannot be written for transformers: {reason}")
    image_processor_kwargs(preprocess_cfg)


def _clip_bpe_tokenizer(tokenizer: SimpleTokenizer, context_length: int, folder: Path):
    from transformers import AutoTokenizer

    build_clip_tokenizer(tokenizer, context_length).save(str(folder / TOKENIZER_FILE))
    sot, eot = tokenizer._special_tokens[:2]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": sot, "eos_token": eot,
              "pad_token": eot, "model_max_length": context_length, "padding_side": "right"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return AutoTokenizer.from_pretrained(str(folder))


def _hf_tokenizer(tokenizer: Any, folder: Path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(str(folder))


def save_processor(tokenizer: Any, preprocess_cfg: dict[str, Any], context_length: int,
                   output_dir: Union[str, Path], siglip: bool = False) -> None:
    """Write tokenizer and image-processor files so ``AutoProcessor.from_pretrained(output_dir)``
    (``CLIPProcessor`` or ``SiglipProcessor``) preprocesses like open_clip."""
    import transformers

    check_processor(tokenizer, preprocess_cfg)
    image_processor = transformers.CLIPImageProcessor(**image_processor_kwargs(preprocess_cfg))
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(tokenizer, SimpleTokenizer):
            hf_tokenizer = _clip_bpe_tokenizer(tokenizer, context_length, Path(tmp))
        else:
            hf_tokenizer = _hf_tokenizer(tokenizer, Path(tmp))
        processor_cls = transformers.SiglipProcessor if siglip else transformers.CLIPProcessor
        processor_cls(image_processor=image_processor, tokenizer=hf_tokenizer).save_pretrained(str(output_dir))
