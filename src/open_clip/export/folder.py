"""One-folder open_clip models: ``open_clip_config.json`` + ``open_clip_model.safetensors``
(+ tokenizer files for Hugging Face tokenizers).

This is the layout ``push_to_hf_hub`` uploads and ``create_model('local-dir:DIR')`` /
``get_tokenizer('local-dir:DIR')`` read back without any network access. The config records every
setting the weights depend on (``quick_gelu``, image size, context length) and the whole
preprocessing, so the folder alone rebuilds the same model, transform and tokenizer.
"""

import copy
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_TEXT_CONFIG_DIR
from ..tokenizer import SigLipTokenizer, SimpleTokenizer
from .common import ExportError, write_json
from .source import ExportSource, load_source

__all__ = ["export_folder", "save_model_folder", "state_dict_for_safetensors"]


def state_dict_for_safetensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors; tensors sharing storage (tied weights)
    are copied, since safetensors refuses shared storage."""
    seen: set = set()
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        ptr = (value.untyped_storage().data_ptr(), value.storage_offset()) if value.numel() else None
        if ptr is not None and ptr in seen:
            value = value.clone()
        elif ptr is not None:
            seen.add(ptr)
        tensors[key] = value.contiguous()
    return tensors


def _tokenizer_config(model_cfg: dict[str, Any], tokenizer: Any, name: str) -> dict[str, Any]:
    """``model_cfg`` with the text_cfg entries that make get_tokenizer('local-dir:') rebuild ``tokenizer``."""
    cfg = copy.deepcopy(model_cfg)
    text_cfg = cfg.setdefault("text_cfg", {})
    if isinstance(tokenizer, SigLipTokenizer):
        # Saved as HF files; the folder's HFTokenizer must clean as SigLipTokenizer does.
        text_cfg["hf_tokenizer_name"] = text_cfg.get("hf_tokenizer_name") or name or "siglip"
        text_cfg["tokenizer_kwargs"] = {**(text_cfg.get("tokenizer_kwargs") or {}), "clean": "canonicalize"}
    elif isinstance(tokenizer, SimpleTokenizer) and text_cfg.get("hf_tokenizer_name"):
        raise ExportError("text_cfg.hf_tokenizer_name is set but the tokenizer is the built-in CLIP BPE one.")
    return cfg


def save_model_folder(source: ExportSource, output_dir: Union[str, Path]) -> Path:
    """Write ``source`` as an open_clip model folder; returns the folder path.

    Files: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``),
    ``open_clip_model.safetensors``, for Hugging Face tokenizers their files, and for Hugging Face
    text towers their transformers config (``hf_text/config.json``).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = source.tokenizer
    has_files = isinstance(tokenizer, SimpleTokenizer) or hasattr(tokenizer, "save_pretrained")
    if tokenizer is not None and not has_files:
        raise ExportError(f"Tokenizer {type(tokenizer).__name__} has no files to write (no save_pretrained).")
    model_cfg = _tokenizer_config(source.model_cfg, tokenizer, source.name)
    from safetensors.torch import save_file

    save_file(state_dict_for_safetensors(source.model), str(out / HF_SAFE_WEIGHTS_NAME))
    if tokenizer is not None and not isinstance(tokenizer, SimpleTokenizer):
        tokenizer.save_pretrained(out)  # HFTokenizer / SigLipTokenizer: get_tokenizer reads them back
    hf_config = getattr(getattr(source.model, "text", None), "config", None)
    if hf_config is not None and hasattr(hf_config, "save_pretrained"):
        # a Hugging Face text tower is built from its transformers config: keep it in the folder
        hf_config.save_pretrained(out / HF_TEXT_CONFIG_DIR)
    write_json(out / HF_CONFIG_NAME, {"model_cfg": model_cfg, "preprocess_cfg": source.preprocess_cfg})
    return out


def export_folder(
    model_name: str,
    pretrained: Optional[str],
    output_dir: Union[str, Path],
    *,
    force_quick_gelu: Optional[bool] = None,
    force_image_size: Optional[Union[int, tuple[int, int]]] = None,
    force_context_length: Optional[int] = None,
    cache_dir: Optional[str] = None,
) -> Path:
    """Build ``model_name`` with ``pretrained`` weights and write it as a model folder.

    Load it back with ``create_model('local-dir:' + str(output_dir))``.
    """
    source = load_source(model_name, pretrained, force_quick_gelu=force_quick_gelu,
                         force_image_size=force_image_size, force_context_length=force_context_length,
                         cache_dir=cache_dir)
    return save_model_folder(source, output_dir)
