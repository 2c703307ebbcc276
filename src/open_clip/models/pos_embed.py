"""Fixed 2-D sine-cosine position embeddings (``pos_embed_type='sin_cos_2d'``) and the MAE-style
position-embedding interpolation helper kept from 3.3's ``pos_embed`` module."""

import numpy as np
import torch

__all__ = [
    "get_2d_sincos_pos_embed",
    "get_2d_sincos_pos_embed_from_grid",
    "get_1d_sincos_pos_embed_from_grid",
    "interpolate_pos_embed",
]


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """1-D encoding [M, embed_dim] of positions ``pos``: all sines first, then all cosines.

    Frequencies are ``1 / 10000 ** (i / (embed_dim / 2))``; computed in float64.
    """
    assert embed_dim % 2 == 0, f"embed_dim {embed_dim} must be even"
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega  # (D/2,)
    pos = pos.reshape(-1).astype(np.float64)  # (M,)
    out = np.einsum("m,d->md", pos, omega)  # (M, D/2) outer product
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed_from_grid(embed_dim: int, grid: np.ndarray) -> np.ndarray:
    """2-D encoding from a (2, 1, gh, gw) grid of (column, row) coordinates: the first half of the
    channels encodes ``grid[0]``, the second half ``grid[1]``."""
    assert embed_dim % 2 == 0, f"embed_dim {embed_dim} must be even"
    emb_first = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_second = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    return np.concatenate([emb_first, emb_second], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = False) -> np.ndarray:
    """Sin-cos table [grid_size**2 (+1), embed_dim] in raster order (row-major tokens).

    For token ``r * G + c`` the first half of the channels encodes the column ``c`` and the second
    half the row ``r``. With ``cls_token`` a zero row is prepended.
    """
    grid_rows = np.arange(grid_size, dtype=np.float32)
    grid_cols = np.arange(grid_size, dtype=np.float32)
    # meshgrid(cols, rows): entry [r, c] of the first array is c, of the second array is r
    grid = np.meshgrid(grid_cols, grid_rows)
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid)
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


def interpolate_pos_embed(model, checkpoint_model: dict) -> None:
    """MAE-style resize of ``checkpoint_model['pos_embed']`` (extra tokens kept, patch grid
    bicubically resized) to ``model.patch_embed`` / ``model.pos_embed``; modifies the dict in place."""
    if "pos_embed" not in checkpoint_model:
        return
    pos_embed_checkpoint = checkpoint_model["pos_embed"]
    embedding_size = pos_embed_checkpoint.shape[-1]
    num_patches = model.patch_embed.num_patches
    num_extra_tokens = model.pos_embed.shape[-2] - num_patches
    orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
    new_size = int(num_patches**0.5)
    if orig_size == new_size:
        return
    print(f"Position interpolate from {orig_size}x{orig_size} to {new_size}x{new_size}")
    extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
    pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
    pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
    pos_tokens = torch.nn.functional.interpolate(
        pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False
    )
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    checkpoint_model["pos_embed"] = torch.cat((extra_tokens, pos_tokens), dim=1)
