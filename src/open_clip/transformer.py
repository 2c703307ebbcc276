"""Compatibility shim: 3.3's ``open_clip.transformer`` names, implemented in ``open_clip.models``."""

from .models.attention import (  # noqa: F401
    Attention,
    AttentionalPooler,
    CustomResidualAttentionBlock,
    CustomTransformer,
    ResidualAttentionBlock,
    Transformer,
    build_causal_mask,
)
from .models.layers import LayerNorm, LayerNormFp32, LayerScale, PatchDropout, QuickGELU  # noqa: F401
from .models.multimodal_transformer import MultimodalTransformer  # noqa: F401
from .models.text_transformer import TextTransformer, lock_text_tower, text_global_pool  # noqa: F401
from .models.vision_transformer import VisionTransformer, _expand_token  # noqa: F401
from .pos_embed import get_2d_sincos_pos_embed  # noqa: F401
from .utils import feature_take_indices, to_2tuple  # noqa: F401
