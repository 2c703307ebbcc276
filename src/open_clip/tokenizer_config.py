"""``get_tokenizer``: pick and build the tokenizer a model config asks for (OpenCLIP 3.3 rules).

Resolution order: model name (plain, ``local-dir:<path>`` or ``hf-hub:<repo>``) -> model config ->
``text_cfg`` (``context_length``, ``hf_tokenizer_name``, ``tokenizer_kwargs``, ``tokenizer_mode``)
-> ``HFTokenizer`` / ``SigLipTokenizer`` / ``SimpleTokenizer``.
"""

import json
import logging
from pathlib import Path
from typing import Any, Optional, Union

from .tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer, SigLipTokenizer, SimpleTokenizer

__all__ = ["get_tokenizer"]

_CONFIG_NAME = "open_clip_config.json"

Tokenizer = Union[SimpleTokenizer, HFTokenizer, SigLipTokenizer]


def _local_dir_config(path: str) -> dict:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Directory specified via 'local-dir:' schema not found at {folder}")
    config_file = folder / _CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"'local-dir:' specified, but config file missing: {config_file}")
    try:
        with open(config_file, encoding="utf-8") as f:
            return json.load(f)["model_cfg"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"Could not load valid config for 'local-dir:{path}' ({e}).") from e


def _hf_hub_config(repo_id: str, cache_dir: Optional[str]) -> Optional[dict]:
    """The repo's ``model_cfg``, or None (after a warning) if it can't be fetched or lacks one."""
    try:
        from .config_registry import _get_hf_config

        model_cfg = _get_hf_config(repo_id, cache_dir=cache_dir)["model_cfg"]
        if not model_cfg:
            raise KeyError("model_cfg")
        return model_cfg
    except Exception as e:  # 3.3 falls back to the repo's own tokenizer on any failure
        logging.warning(
            f"Could not load config from hf-hub:{repo_id} ({e}); using '{repo_id}' as the HF tokenizer name."
        )
        return None


def _siglip_variant(model_name: str) -> str:
    name = model_name.lower()
    if "siglip2" in name:
        return "gemma"
    if "i18n" in name:
        return "mc4"
    return "c4-en"


def get_tokenizer(
    model_name: str = "",
    context_length: Optional[int] = None,
    cache_dir: Optional[str] = None,
    **kwargs: Any,
) -> Tokenizer:
    """Build the tokenizer for ``model_name``.

    Args:
        model_name: a built-in config name, ``local-dir:<folder>``, ``hf-hub:<org/repo>`` or ''.
        context_length: overrides the config's ``text_cfg.context_length`` (default 77).
        cache_dir: cache folder for Hub downloads (HF tokenizers only).
        **kwargs: tokenizer arguments; they override the config's ``tokenizer_kwargs``.

    Returns:
        ``HFTokenizer`` when the config names ``hf_tokenizer_name`` (or for an hf-hub repo without a
        usable config), ``SigLipTokenizer`` for other names containing 'siglip', otherwise
        ``SimpleTokenizer``. An unknown built-in name gives ``SimpleTokenizer(context_length or 77)``.
    """
    from .config_registry import get_model_config, parse_model_name

    schema, identifier = parse_model_name(model_name)
    hub_fallback = None
    if schema == "local-dir":
        config = _local_dir_config(identifier)
    elif schema == "hf-hub":
        config = _hf_hub_config(identifier, cache_dir)
        if config is None:
            config, hub_fallback = {}, identifier
    elif model_name:
        config = get_model_config(model_name)
        if config is None:  # unknown name: note `or`, so 0 falls back to 77 here (3.3)
            return SimpleTokenizer(context_length=context_length or DEFAULT_CONTEXT_LENGTH, **kwargs)
    else:
        config = {}

    text_cfg = config.get("text_cfg", {})
    if context_length is None:
        context_length = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    tokenizer_kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    tokenizer_kwargs.update(kwargs)
    hf_name = text_cfg.get("hf_tokenizer_name") or hub_fallback

    if hf_name:
        source = Path(identifier) if schema == "local-dir" else hf_name
        return HFTokenizer(
            source,
            context_length=context_length,
            cache_dir=cache_dir,
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **tokenizer_kwargs,
        )
    if schema is None and "siglip" in model_name.lower():
        # 3.3 passes neither tokenizer kwargs nor cache_dir in this branch.
        return SigLipTokenizer(_siglip_variant(model_name), context_length=context_length)
    return SimpleTokenizer(context_length=context_length, **tokenizer_kwargs)
