"""The classifier used for fine-tuning: a CLIP image tower followed by a linear head on normalised features.

Owns :class:`ImageClassifier`, building the head from the zero-shot classifier (so that at step 0 the
classifier predicts exactly what zero-shot classification predicts), and reading/writing the head file
(``head.safetensors``: ``weight``/``bias`` of the fine-tuned head, ``zeroshot.weight``/``zeroshot.bias``
of the initial one, class names and logit scale in the metadata).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

ZEROSHOT_PREFIX = "zeroshot."


class ImageClassifier(nn.Module):
    """``logits = head(normalize(visual(images)))``; parameter names ``visual.*`` as in the CLIP model.

    ``visual`` is the CLIP model's own image tower (shared, not copied), so training this module
    fine-tunes the CLIP model in place.
    """

    def __init__(self, visual: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.visual(images)
        if isinstance(features, (tuple, list)):  # towers that also return tokens (CoCa): pooled first
            features = features[0]
        # The head stays float32 even when the tower runs in fp16/bf16 (autocast still applies inside).
        return self.head(F.normalize(features, dim=-1).to(self.head.weight.dtype))  # (B, C)


def head_from_classifier(classifier: torch.Tensor, logit_scale: float) -> nn.Linear:
    """A linear head computing ``logit_scale * features @ classifier`` (zero bias); ``classifier`` is (D, C)."""
    dim, num_classes = classifier.shape
    head = nn.Linear(dim, num_classes, bias=True)
    with torch.no_grad():
        head.weight.copy_(logit_scale * classifier.t().float())
        head.bias.zero_()
    return head


def zero_shot_head(
    model: nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence,
    device: torch.device,
    autocast: Callable = torch.no_grad,
) -> nn.Linear:
    """The head whose logits are the zero-shot classifier's, scaled by the model's logit scale."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    model.eval()
    with autocast():
        classifier = build_zero_shot_classifier(model, tokenizer, classnames, templates, num_classes_per_batch=10,
                                                device=device)
    return head_from_classifier(classifier.float(), float(model.logit_scale.detach().float().exp().mean()))


def head_state(zeroshot: nn.Linear, finetuned: nn.Linear) -> dict[str, torch.Tensor]:
    """Tensors of the head file: the fine-tuned head plus the zero-shot one under ``zeroshot.``."""
    state = {k: v.detach().cpu() for k, v in finetuned.state_dict().items()}
    state.update({ZEROSHOT_PREFIX + k: v.detach().cpu() for k, v in zeroshot.state_dict().items()})
    return state


def head_metadata(classnames: Sequence[str], logit_scale: float) -> dict[str, str]:
    return {"classnames": json.dumps(list(classnames)), "logit_scale": repr(logit_scale),
            "features": "L2-normalised image features"}


def load_head(path: str, alpha: float = 1.0) -> tuple[nn.Linear, list[str]]:
    """The head of a fine-tuning run (``alpha`` mixes it with the zero-shot head, as WiSE-FT does) and the class names.

    Use it with a ``wise_ft_alpha_<a>`` checkpoint of the same ``alpha``:
    ``logits = head(model.encode_image(images, normalize=True))``.
    """
    from safetensors import safe_open

    from .wise_ft import interpolate_state_dicts

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    finetuned = {k: v for k, v in tensors.items() if not k.startswith(ZEROSHOT_PREFIX)}
    zeroshot = {k[len(ZEROSHOT_PREFIX):]: v for k, v in tensors.items() if k.startswith(ZEROSHOT_PREFIX)}
    state = interpolate_state_dicts(zeroshot, finetuned, alpha)
    num_classes, dim = state["weight"].shape
    head = nn.Linear(dim, num_classes)
    head.load_state_dict(state)
    return head, json.loads(metadata.get("classnames", "[]"))
