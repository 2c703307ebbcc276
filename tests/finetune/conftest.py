"""Session fixtures of the fine-tuning tests: solid-colour class folders and a tiny local-dir CLIP."""

import json

import pytest
import torch
from finetune_fixtures import FOLDERS, TINY, write_colour_folders


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory):
    """Train/val/OOD colour folders, a classnames TSV and a templates file."""
    d = tmp_path_factory.mktemp("colours")
    (d / "classnames.tsv").write_text("".join(f"{f}\t{c}\n" for f, c in FOLDERS.items()))
    (d / "templates.txt").write_text("a {} square.\na photo of something {}.\n{}\n")
    return {
        "train": write_colour_folders(d / "train", 16, 0),
        "val": write_colour_folders(d / "val", 8, 1),
        "ood": write_colour_folders(d / "dark", 8, 2, shade=0.55),
        "classnames": str(d / "classnames.tsv"),
        "templates": str(d / "templates.txt"),
        "root": d,
    }


@pytest.fixture(scope="session")
def _tiny_clip_files(tmp_path_factory):
    """Config folders and random 'zero-shot' weights of the tiny CLIP, written once."""
    from open_clip.models.clip import CLIP
    from open_clip_train.weights_io import save_state_dict

    d = tmp_path_factory.mktemp("tiny_model")
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))
    configs = tmp_path_factory.mktemp("tiny_cfg")
    (configs / "tiny-ft.json").write_text(json.dumps(TINY))
    torch.manual_seed(0)
    checkpoint = d / "open_clip_model.safetensors"
    save_state_dict(CLIP(**TINY).state_dict(), str(checkpoint))
    return {"name": f"local-dir:{d}", "registered": "tiny-ft", "checkpoint": str(checkpoint), "configs": configs}


@pytest.fixture(scope="module")
def tiny_clip(_tiny_clip_files):
    """A tiny CLIP with random 'zero-shot' weights, as ``local-dir:`` (config + weights, usable from
    subprocesses) and as the registered config ``tiny-ft`` (which takes ``pretrained=<file>``). The
    registration lasts for the module only, so later test modules see the shipped registry."""
    from open_clip import config_registry

    configs, paths = dict(config_registry._MODEL_CONFIGS), list(config_registry._MODEL_CONFIG_PATHS)
    config_registry.add_model_config(_tiny_clip_files["configs"])
    yield _tiny_clip_files
    config_registry._MODEL_CONFIGS.clear()
    config_registry._MODEL_CONFIGS.update(configs)
    config_registry._MODEL_CONFIG_PATHS[:] = paths
