"""Foreign checkpoint formats: detection and conversion into OpenCLIP's state-dict layout.

Owns ``convert_state_dict`` (called by ``load_checkpoint`` on every state dict),
``convert_mobile_clip_state_dict`` (Apple's original MobileCLIP files) and
``load_big_vision_weights`` (Google big_vision ``.npz`` files). The last two formats are recognised
but not converted by this implementation: they fail loudly, naming the format and the OpenCLIP-format
weights to use instead, rather than loading garbage. The model classes 3.3 imported here are
re-exported.
"""

import os
from typing import Any, Union

import torch

from .models.attention import Transformer  # noqa: F401 (re-export)
from .models.clip import CLIP, CustomTextCLIP  # noqa: F401 (re-exports)
from .models.text_transformer import TextTransformer  # noqa: F401 (re-export)

# Keys that only Apple's original MobileCLIP checkpoints contain (FastViT S1/S2, ViT-hybrid B).
_MOBILECLIP_FASTVIT_KEY = "image_encoder.model.patch_embed.0.rbr_conv.0.conv.weight"
_MOBILECLIP_HYBRID_KEY = "image_encoder.model.patch_emb.0.block.conv.weight"


def is_mobileclip_original(state_dict: dict[str, Any]) -> bool:
    """Whether ``state_dict`` is in Apple's original MobileCLIP layout."""
    return _MOBILECLIP_FASTVIT_KEY in state_dict or _MOBILECLIP_HYBRID_KEY in state_dict


_MOBILECLIP_UNSUPPORTED = (
    "Apple's original MobileCLIP checkpoint format (ml-mobileclip files with image_encoder.model.* / "
    "text_encoder.* keys) is not supported: libreclip does not convert it. Use the OpenCLIP-format "
    "weights of the same models instead, e.g. create_model('MobileCLIP-S2', pretrained='datacompdr') "
    "(MobileCLIP-S1/S2/B: 'datacompdr', MobileCLIP-B: 'datacompdr_lt', MobileCLIP2-*: 'dfndr2b'), or "
    "convert the file once with OpenCLIP 3.3 and load the saved state dict."
)


def convert_state_dict(model: torch.nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Return ``state_dict`` in OpenCLIP's layout for ``model`` (unchanged if it already is).

    Raises NotImplementedError for Apple's original MobileCLIP files, whose remapping is not
    implemented here; the registry's MobileCLIP tags point at converted OpenCLIP-format weights.
    """
    if is_mobileclip_original(state_dict):
        return convert_mobile_clip_state_dict(model, state_dict)
    return state_dict


def convert_mobile_clip_state_dict(
    model: torch.nn.Module, state_dict: dict[str, Any], fastvit: bool = True
) -> dict[str, Any]:
    """3.3's converter of Apple's original MobileCLIP checkpoints (FastViT or ViT-hybrid image tower).

    Not supported here: always raises NotImplementedError naming the OpenCLIP-format weights to use.
    """
    raise NotImplementedError(_MOBILECLIP_UNSUPPORTED)


def load_big_vision_weights(model: torch.nn.Module, checkpoint_path: Union[str, os.PathLike]) -> None:
    """3.3's loader of Google big_vision (JAX) SigLIP ``.npz``/``.npy`` checkpoints into ``model``.

    Not supported here: always raises NotImplementedError naming the OpenCLIP-format weights to use.
    """
    raise NotImplementedError(
        f"Google big_vision (JAX) checkpoint files (.npz/.npy, here {checkpoint_path}) are not supported: "
        f"libreclip does not convert them. The SigLIP and SigLIP2 weights are published in OpenCLIP "
        f"format: use a *-SigLIP* / *-SigLIP2* model with pretrained='webli', e.g. "
        f"create_model('ViT-B-16-SigLIP', pretrained='webli'), or convert the file once with "
        f"OpenCLIP 3.3 and load the saved state dict."
    )
