"""Model-config registry: architecture JSON files -> named config dicts.

Owns `_MODEL_CONFIG_PATHS` (where configs are looked up), `_MODEL_CONFIGS` (name -> config dict,
natural-sorted), `list_models`, `get_model_config`, `add_model_config`, and the model-name schema
parsing shared with the factory and tokenizer (`parse_model_name`, `local-dir:` / `hf-hub:`).

A config file is registered under its file stem when it holds the three required keys
`embed_dim`, `vision_cfg` and `text_cfg`. Later paths override earlier ones with the same stem, so
user folders added with `add_model_config` shadow the built-ins.
"""

import copy
import difflib
import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from .constants import HF_CONFIG_NAME

HF_HUB_PREFIX = 'hf-hub:'
LOCAL_DIR_PREFIX = 'local-dir:'

REQUIRED_CONFIG_KEYS = ('embed_dim', 'vision_cfg', 'text_cfg')

_MODEL_CONFIG_PATHS: list[Path] = [Path(__file__).parent / 'model_configs/']
_MODEL_CONFIGS: dict[str, dict[str, Any]] = {}
# name -> (file, problem) for files that were found but could not be registered; kept so that
# asking for such a model explains why instead of answering "not found".
_INVALID_CONFIGS: dict[str, tuple[Path, str]] = {}


def _natural_key(name: str) -> list:
    """Case-insensitive natural sort key: digit runs compare as integers (RN50 < RN50x4 < RN101)."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name.lower())]


def _read_config_file(path: Path) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """Parse one config file; returns (config, None) or (None, problem)."""
    try:
        with open(path, encoding='utf-8') as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f'not valid JSON ({e})'
    if not isinstance(cfg, dict):
        return None, f'top level is a {type(cfg).__name__}, expected a JSON object'
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in cfg]
    if missing:
        return None, f'missing required key(s) {missing} (a model config needs {list(REQUIRED_CONFIG_KEYS)})'
    return cfg, None


def _config_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix == '.json' else []
    if path.is_dir():
        return sorted(path.glob('*.json'))
    return []


def _rescan_model_configs() -> None:
    """Re-read every path of `_MODEL_CONFIG_PATHS` into `_MODEL_CONFIGS` (entries are never removed)."""
    for base in _MODEL_CONFIG_PATHS:
        for cf in _config_files(Path(base)):
            cfg, problem = _read_config_file(cf)
            if cfg is None:
                _INVALID_CONFIGS[cf.stem] = (cf, problem)
                warnings.warn(f"Skipping model config file '{cf}': {problem}.", stacklevel=2)
                continue
            _MODEL_CONFIGS[cf.stem] = cfg
            _INVALID_CONFIGS.pop(cf.stem, None)
    # Sorted in place: other modules (e.g. open_clip.factory) hold references to this same dict.
    ordered = sorted(_MODEL_CONFIGS.items(), key=lambda x: _natural_key(x[0]))
    _MODEL_CONFIGS.clear()
    _MODEL_CONFIGS.update(ordered)


def list_models() -> list[str]:
    """Names of all registered model configs, in case-insensitive natural order."""
    return list(_MODEL_CONFIGS.keys())


def add_model_config(path: Union[str, Path]) -> None:
    """Register model configs from a `.json` file or a folder of them (non-recursive).

    Configs found here override registered ones with the same file stem.
    """
    if not isinstance(path, Path):
        path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Model config path '{path}' does not exist (expected a .json file or a folder).")
    _MODEL_CONFIG_PATHS.append(path)
    _rescan_model_configs()


def parse_model_name(model_name: str) -> tuple[Optional[str], str]:
    """Split a model name into (schema, identifier).

    `'local-dir:<path>'` -> ('local-dir', path), `'hf-hub:<org/repo>'` -> ('hf-hub', 'org/repo'),
    anything else -> (None, model_name).
    """
    if model_name.startswith(LOCAL_DIR_PREFIX):
        ident = model_name[len(LOCAL_DIR_PREFIX):]
        if not ident:
            raise ValueError("Empty path specified after 'local-dir:' schema.")
        return 'local-dir', ident
    if model_name.startswith(HF_HUB_PREFIX):
        ident = model_name[len(HF_HUB_PREFIX):]
        if not ident:
            raise ValueError("Empty identifier specified after 'hf-hub:' schema.")
        return 'hf-hub', ident
    return None, model_name


def _model_cfg_of(config: dict[str, Any]) -> dict[str, Any]:
    """`model_cfg` of an `open_clip_config.json`, or the whole dict if it has no such key."""
    return config.get('model_cfg', config)


def _get_hf_config(model_id: str, cache_dir: Optional[str] = None) -> dict[str, Any]:
    """Download and parse a Hub repo's `open_clip_config.json`."""
    from .pretrained import download_pretrained_from_hf

    config_file = download_pretrained_from_hf(model_id, filename=HF_CONFIG_NAME, cache_dir=cache_dir)
    with open(config_file, encoding='utf-8') as f:
        return json.load(f)


def get_model_config(model_name: str) -> Optional[dict[str, Any]]:
    """Model config for a registered name (a deep copy), a `local-dir:` folder or an `hf-hub:` repo.

    Returns None for an unknown plain name. No '/' -> '-' cleaning happens here (unlike
    `create_model`). Raises ValueError if the name's config file exists but is invalid.
    """
    schema, ident = parse_model_name(model_name)
    if schema == 'local-dir':
        with open(Path(ident) / HF_CONFIG_NAME, encoding='utf-8') as f:
            return _model_cfg_of(json.load(f))
    if schema == 'hf-hub':
        return _model_cfg_of(_get_hf_config(ident))
    if model_name in _MODEL_CONFIGS:
        return copy.deepcopy(_MODEL_CONFIGS[model_name])
    if model_name in _INVALID_CONFIGS:
        path, problem = _INVALID_CONFIGS[model_name]
        raise ValueError(f"Model config file '{path}' for model '{model_name}' is invalid: {problem}.")
    return None


def closest_model_names(model_name: str, n: int = 5) -> list[str]:
    """Registered names most similar to `model_name` (case-insensitive difflib match)."""
    by_lower = {}
    for name in _MODEL_CONFIGS:
        by_lower.setdefault(name.lower(), name)
    matches = difflib.get_close_matches(model_name.lower(), list(by_lower), n=n, cutoff=0.5)
    return [by_lower[m] for m in matches]


def unknown_model_message(model_name: str) -> str:
    """Error text for a model name that has no config: closest names, then how to list all."""
    close = closest_model_names(model_name)
    hint = f' Closest matches: {close}.' if close else ''
    return (
        f"Model config for '{model_name}' not found in built-ins.{hint} "
        f"Use open_clip.list_models() to see all {len(_MODEL_CONFIGS)} available names, or "
        f"add_model_config(path) to register your own."
    )


_rescan_model_configs()
logging.debug('Registered %d model configs', len(_MODEL_CONFIGS))
