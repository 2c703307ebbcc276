"""Turning raw image/caption data into a training pair, classifying every failure as a bad-sample kind."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from typing import Any

from PIL import Image

from .bad_samples import (
    CAPTION_ENCODING_ERROR,
    EMPTY_MEMBER,
    IMAGE_DECODE_ERROR,
    MISSING_CAPTION,
    MISSING_IMAGE,
    TRANSFORM_ERROR,
    BadSample,
)


def _finish_image(img: Image.Image, what: str) -> Image.Image:
    try:
        img.load()  # force the full decode now, so truncated/corrupt data fails here
        return img.convert("RGB")
    except Exception as exc:
        raise BadSample(IMAGE_DECODE_ERROR, f"{what}: {exc!r}") from None


def image_from_bytes(data: bytes, what: str = "") -> Image.Image:
    """Decode image bytes to an RGB PIL image; raise ``BadSample`` for empty or undecodable data."""
    if not data:
        raise BadSample(EMPTY_MEMBER, f"{what}: zero-byte image")
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as exc:
        raise BadSample(IMAGE_DECODE_ERROR, f"{what}: {exc!r}") from None
    return _finish_image(img, what)


def image_from_path(path: str) -> Image.Image:
    """Open an image file as RGB; missing file -> ``missing_image``, bad bytes -> ``image_decode_error``."""
    if not isinstance(path, str) or not path:
        raise BadSample(MISSING_IMAGE, f"no image path ({path!r})")
    try:
        info = os.stat(path)
        # Only a regular file is empty by its size; a pipe or device is opened and read (a read that
        # blocks is for the stall watchdog to report).
        if stat.S_ISREG(info.st_mode) and info.st_size == 0:
            raise BadSample(EMPTY_MEMBER, f"{path}: zero-byte image file")
        img = Image.open(path)
    except BadSample:
        raise
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise BadSample(MISSING_IMAGE, f"{path}: {exc!r}") from None
    except Exception as exc:
        raise BadSample(IMAGE_DECODE_ERROR, f"{path}: {exc!r}") from None
    return _finish_image(img, path)


def caption_from_bytes(data: bytes, what: str = "") -> str:
    """Decode UTF-8 caption bytes; empty -> ``empty_member``, not UTF-8 -> ``caption_encoding_error``."""
    if not data:
        raise BadSample(EMPTY_MEMBER, f"{what}: zero-byte caption")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadSample(CAPTION_ENCODING_ERROR, f"{what}: {exc}") from None


def check_caption(caption: Any, what: str = "") -> str:
    """Validate a caption read as text (CSV); undecodable bytes were read as surrogate escapes."""
    if not isinstance(caption, str) or not caption.strip():
        raise BadSample(MISSING_CAPTION, f"{what}: empty caption")
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadSample(CAPTION_ENCODING_ERROR, f"{what}: {exc}") from None
    return caption


def make_pair(
    image: Image.Image,
    caption: str,
    transform: Callable | None,
    tokenizer: Callable | None,
    what: str = "",
    caption_as_list: bool = True,
) -> tuple[Any, Any]:
    """Apply the image transform and the tokenizer (row 0 of its output); failures -> ``transform_error``.

    Both may be any callables, as in 3.3. The tokenizer gets ``[caption]`` (3.3's CSV dataset) or,
    with ``caption_as_list=False``, the caption string itself (3.3's WebDataset and synthetic data):
    a custom tokenizer such as ``lambda t: [t.strip()]`` sees exactly what 3.3 gave it.
    """
    try:
        image_out = transform(image) if transform is not None else image
        if tokenizer is None:
            text_out = caption
        else:
            text_out = tokenizer([caption] if caption_as_list else caption)[0]
    except Exception as exc:
        raise BadSample(TRANSFORM_ERROR, f"{what}: {exc!r}") from None
    return image_out, text_out
