"""Compatibility module: the names 3.3 exposed as `open_clip.model`.

The model classes and helpers live in `open_clip.models` and `open_clip.checkpoint`; this module
re-exports them (and the tower classes 3.3 imported here) under their old home and holds
`trace_model`. `build_model_from_openai_state_dict` lives in `open_clip.openai`.
"""

import torch

from .checkpoint import (  # noqa: F401 (re-exports)
    convert_to_custom_text_state_dict,
    load_checkpoint,
    load_state_dict,
    resize_pos_embed,
    resize_text_pos_embed,
)
from .hf_model import HFTextEncoder  # noqa: F401 (re-export)
from .models.attention import Attention  # noqa: F401 (re-export)
from .models.clip import (  # noqa: F401 (re-exports)
    CLIP,
    CLIPTextCfg,
    CLIPVisionCfg,
    CustomTextCLIP,
    _build_text_tower,
    _build_vision_tower,
    convert_weights_to_fp16,
    convert_weights_to_lp,
    get_cast_dtype,
    get_input_dtype,
    get_model_preprocess_cfg,
    get_model_tokenize_cfg,
    set_model_preprocess_cfg,
)
from .models.layers import LayerNorm, LayerNormFp32, QuickGELU  # noqa: F401 (re-exports)
from .models.modified_resnet import ModifiedResNet  # noqa: F401 (re-export)
from .models.text_transformer import TextTransformer, lock_text_tower, text_global_pool  # noqa: F401
from .models.vision_transformer import VisionTransformer  # noqa: F401 (re-export)
from .openai import build_model_from_openai_state_dict  # noqa: F401 (re-export)
from .timm_model import TimmModel  # noqa: F401 (re-export)
from .utils import to_2tuple


def trace_model(model: torch.nn.Module, batch_size: int = 256, device: torch.device = torch.device('cpu')):
    """TorchScript-trace `forward`, `encode_text` and `encode_image` with dummy inputs.

    Images are ones of shape (B, 3, H, W) from `model.visual.image_size` (int or (H, W): 3.3 failed
    on the tuple form), text is int zeros of shape (B, context_length). Traced for inference, without
    gradients: attention then records the same path (torch's fused one) in the trace and in its
    check (3.3 traced with gradients on, so the check, which runs without, saw another graph).
    """
    model.eval()
    image_size = model.visual.image_size
    height, width = to_2tuple(image_size)
    example_images = torch.ones((batch_size, 3, height, width), device=device)
    example_text = torch.zeros((batch_size, model.context_length), dtype=torch.int, device=device)
    with torch.no_grad():
        model = torch.jit.trace_module(
            model,
            inputs=dict(
                forward=(example_images, example_text),
                encode_text=(example_text,),
                encode_image=(example_images,),
            ),
        )
    model.visual.image_size = image_size
    return model

