"""Steps inserted in front of a preprocess pipeline run before its input check (3.3 usage:
`preprocess.transforms.insert(0, ToPILImage())`, then numpy images)."""

import copy
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import ToPILImage

import open_clip


def _array() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)  # (H, W, C)


@pytest.mark.parametrize("is_train", [False, True])
def test_numpy_input_after_inserting_to_pil(is_train):
    preprocess = open_clip.image_transform(32, is_train=is_train)
    reference = copy.deepcopy(preprocess)
    preprocess.transforms.insert(0, ToPILImage())
    torch.manual_seed(0)
    got = preprocess(_array())
    torch.manual_seed(0)
    expected = reference(Image.fromarray(_array()))
    assert got.shape == (3, 32, 32)
    assert torch.equal(got, expected)


def test_model_preprocess_with_inserted_step():
    _, _, preprocess = open_clip.create_model_and_transforms("RN50", pretrained=None)
    preprocess.transforms.insert(0, ToPILImage())
    assert preprocess(_array()).shape == (3, 224, 224)


def test_check_still_guards_the_original_first_step():
    preprocess = open_clip.image_transform(32, is_train=False)
    with pytest.raises(TypeError, match="PIL.Image.fromarray"):
        preprocess(_array())  # nothing inserted: numpy is still named as the problem
    preprocess.transforms.insert(0, lambda img: img.crop((0, 0, 0, 0)))
    with pytest.raises(ValueError, match="zero size"):
        preprocess(Image.new("RGB", (8, 8)))  # what the inserted step produced is checked


def test_pickled_pipeline_keeps_the_checked_step():
    preprocess = pickle.loads(pickle.dumps(open_clip.image_transform(32, is_train=False)))
    preprocess.transforms.insert(0, ToPILImage())
    assert preprocess(_array()).shape == (3, 32, 32)
