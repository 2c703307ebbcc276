"""Bad inputs fail fast and clearly: wrong types, empty images, truncated files."""

import io
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from open_clip.transform import image_transform

IMAGES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "images"

_PIPELINES = {
    "shortest": dict(image_size=32),
    "shortest_hw": dict(image_size=(24, 32)),
    "longest": dict(image_size=32, resize_mode="longest"),
    "squash": dict(image_size=32, resize_mode="squash"),
    "train": dict(image_size=32, is_train=True),
}


def _transform(name):
    kwargs = dict(_PIPELINES[name])
    return image_transform(is_train=kwargs.pop("is_train", False), **kwargs)


@pytest.mark.parametrize("name", list(_PIPELINES))
@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.uint8), "cat.jpg", None, [[0, 1]], 3.0],
                         ids=["ndarray", "str", "None", "list", "float"])
def test_non_image_raises_type_error(name, bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        _transform(name)(bad)


@pytest.mark.parametrize("name", list(_PIPELINES))
@pytest.mark.parametrize("size", [(0, 5), (5, 0), (0, 0)])
def test_zero_sized_pil_raises_value_error(name, size):
    with pytest.raises(ValueError, match="zero size"):
        _transform(name)(Image.new("RGB", size))


@pytest.mark.parametrize("name", list(_PIPELINES))
@pytest.mark.parametrize("shape", [(3, 0, 5), (3, 5, 0), (0, 5, 5), (5,)])
def test_empty_tensor_raises_value_error(name, shape):
    with pytest.raises(ValueError, match=r"no pixels; expected \(C, H, W\)"):
        _transform(name)(torch.zeros(shape))


def _truncated(tmp_path, name, keep=0.5):
    data = (IMAGES / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["astronaut.png", "rocket.jpg", "chelsea.png", "hubble_deep_field.jpg"])
@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_file_errors_clearly(tmp_path, name, keep):
    path = _truncated(tmp_path, name, keep)
    try:
        img = Image.open(path)
    except OSError:  # so little is left that PIL already rejects the header: clear enough
        return
    with pytest.raises(OSError, match=name):
        image_transform(32, is_train=False)(img)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["astronaut.png", "rocket.jpg"])
def test_truncated_file_allowed_by_pil_gives_result(tmp_path, monkeypatch, name):
    """With PIL's LOAD_TRUNCATED_IMAGES the missing part is filled in and we get a tensor."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    img = Image.open(_truncated(tmp_path, name))
    out = image_transform(32, is_train=False)(img)
    assert out.shape == (3, 32, 32) and torch.isfinite(out).all()


def test_in_memory_truncated_names_placeholder():
    data = (IMAGES / "rocket.jpg").read_bytes()
    img = Image.open(io.BytesIO(data[: len(data) // 3]))
    with pytest.raises(OSError, match="in-memory image"):
        image_transform(32, is_train=False)(img)


def test_intact_file_still_works():
    out = image_transform(32, is_train=False)(Image.open(IMAGES / "rocket.jpg"))
    assert out.shape == (3, 32, 32)
