"""Compatibility shim: 3.3's ``open_clip.coca_model`` names, implemented in ``open_clip.models``
(``models/coca.py``: model and config; ``models/generation.py``: captioning)."""

from .models.coca import CoCa, MultimodalCfg, _build_text_decoder_tower  # noqa: F401
from .models.generation import GENERATION_TYPES, MaxLengthCriteria  # noqa: F401
from .models.multimodal_transformer import MultimodalTransformer  # noqa: F401
