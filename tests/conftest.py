"""Shared test settings: small thread counts, and a model-config registry restored after every test."""

import copy
import pathlib

import pytest
import torch

torch.set_num_threads(1)  # tiny test models: threading overhead outweighs the gain

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


@pytest.fixture(autouse=True)
def _isolated_model_registry():
    """Tests register their own configs; put the global registry back so no test sees another's."""
    from open_clip import config_registry

    configs = copy.deepcopy(config_registry._MODEL_CONFIGS)
    paths = list(config_registry._MODEL_CONFIG_PATHS)
    yield
    config_registry._MODEL_CONFIGS.clear()
    config_registry._MODEL_CONFIGS.update(configs)
    config_registry._MODEL_CONFIG_PATHS[:] = paths
