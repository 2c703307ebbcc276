"""Foreign checkpoint formats: detection and conversion into OpenCLIP's state-dict layout.

Owns ``convert_state_dict`` (called by ``load_checkpoint`` on every state dict) and
``load_big_vision_weights`` (Google big_vision ``.npz`` files). Formats we recognise but cannot
convert yet fail loudly with what to use instead, rather than loading garbage.
"""

from typing import Any

import torch

# Keys that only Apple's original MobileCLIP checkpoints contain (FastViT S1/S2, ViT-hybrid B).
_MOBILECLIP_FASTVIT_KEY = "image_encoder.model.patch_embed.0.rbr_conv.0.conv.weight"
_MOBILECLIP_HYBRID_KEY = "image_encoder.model.patch_emb.0.block.conv.weight"


def is_mobileclip_original(state_dict: dict[str, Any]) -> bool:
    """Whether ``state_dict`` is in Apple's original MobileCLIP layout."""
    return _MOBILECLIP_FASTVIT_KEY in state_dict or _MOBILECLIP_HYBRID_KEY in state_dict


def convert_state_dict(model: torch.nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Return ``state_dict`` in OpenCLIP's layout for ``model`` (unchanged if it already is).

    Raises NotImplementedError for Apple's original MobileCLIP files, whose remapping is not
    implemented here; the registry's MobileCLIP tags point at converted OpenCLIP-format weights.
    """
    if is_mobileclip_original(state_dict):
        raise NotImplementedError(
            "This is an original Apple MobileCLIP checkpoint (image_encoder.model.* keys); converting "
            "it is not supported. Use the OpenCLIP-format weights instead, e.g. "
            "create_model('MobileCLIP-S2', pretrained='datacompdr')."
        )
    return state_dict


def load_big_vision_weights(model: torch.nn.Module, checkpoint_path: str) -> None:
    """Load a big_vision (JAX) SigLIP ``.npz``/``.npy`` checkpoint into ``model``.

    Not supported by this implementation: raises NotImplementedError naming the alternative.
    """
    raise NotImplementedError(
        f"Loading big_vision checkpoints ({checkpoint_path}) is not supported. The SigLIP/SigLIP2 "
        f"weights are published in OpenCLIP format: use pretrained='webli' with a *-SigLIP* model."
    )
