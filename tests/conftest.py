"""Shared test settings: small thread counts keep the suite predictable on 2 cores."""

import pathlib

import pytest
import torch

torch.set_num_threads(2)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
    return FIXTURES
