"""Compatibility shim: 3.3's ``open_clip.pos_embed`` names, implemented in ``open_clip.models.pos_embed``."""

from .models.pos_embed import (  # noqa: F401
    get_1d_sincos_pos_embed_from_grid,
    get_2d_sincos_pos_embed,
    get_2d_sincos_pos_embed_from_grid,
    interpolate_pos_embed,
)
