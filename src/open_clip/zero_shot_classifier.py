"""Zero-shot classifier weights from class names and prompt templates.

Owns `build_zero_shot_classifier` (batched over classes) and `build_zero_shot_classifier_legacy`
(one class at a time, 3.3's older loop), plus the `batched` helper. Each class's weight is the
normalised mean of its normalised prompt embeddings; the result is (embed_dim, num_classes) so
that `image_features @ weights` gives per-class logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from itertools import islice

import torch
import torch.nn.functional as F

__all__ = ["batched", "build_zero_shot_classifier", "build_zero_shot_classifier_legacy"]

Template = str | Callable[[str], str]


def batched(iterable: Iterable, n: int | None):
    """Yield lists of up to `n` consecutive items (the last may be shorter); all at once if `n` is falsy."""
    iterator = iter(iterable)
    while True:
        batch = list(islice(iterator, n)) if n else list(iterator)
        if not batch:
            return
        yield batch


def _check_inputs(classnames, templates) -> None:
    for name, value in (("classnames", classnames), ("templates", templates)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(f"{name} must be a sequence (list or tuple), got {type(value).__name__}")
        if len(value) == 0:
            raise ValueError(f"{name} must not be empty")


def _prompts(classnames: Sequence[str], templates: Sequence[Template]) -> list[str]:
    # Like 3.3, the first template decides: str patterns are formatted, anything else is called.
    use_format = isinstance(templates[0], str)
    return [t.format(c) if use_format else t(c) for c in classnames for t in templates]


def build_zero_shot_classifier(
    model,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[Template],
    num_classes_per_batch: int | None = 10,
    device: str | torch.device = "cpu",
    use_tqdm: bool = False,
) -> torch.Tensor:
    """Build zero-shot weights, encoding `num_classes_per_batch` classes' prompts per text batch.

    Args:
        model: anything with `encode_text(tokens, normalize=True)`.
        tokenizer: callable mapping a list of strings to a (N, L) token tensor.
        classnames: class names, in output column order.
        templates: `str.format` patterns with one `{}` or one-argument callables.
        num_classes_per_batch: classes per forward pass (falsy: all at once).
        device: where the tokens are moved.
        use_tqdm: show a progress bar over class batches.

    Returns:
        (embed_dim, num_classes) tensor of unit-norm columns.
    """
    _check_inputs(classnames, templates)
    num_templates = len(templates)
    batches = batched(classnames, num_classes_per_batch)
    if use_tqdm:
        from tqdm import tqdm

        total = math.ceil(len(classnames) / num_classes_per_batch) if num_classes_per_batch else 1
        batches = tqdm(batches, total=total, unit_scale=num_classes_per_batch)
    columns = []
    with torch.no_grad():
        for batch in batches:
            tokens = tokenizer(_prompts(batch, templates)).to(device)
            embeddings = model.encode_text(tokens, normalize=True)  # (n_batch * n_templates, D)
            embeddings = embeddings.reshape(len(batch), num_templates, -1).mean(dim=1)  # (n_batch, D)
            embeddings = embeddings / embeddings.norm(dim=1, keepdim=True)
            columns.append(embeddings.T)  # (D, n_batch)
    return torch.cat(columns, dim=1)


def build_zero_shot_classifier_legacy(
    model,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[Template],
    device: str | torch.device = "cpu",
    use_tqdm: bool = False,
) -> torch.Tensor:
    """One class per forward pass (3.3's original loop); same weights as the batched builder.

    Returns:
        (embed_dim, num_classes) tensor on `device`.
    """
    _check_inputs(classnames, templates)
    names: Iterable[str] = classnames
    if use_tqdm:
        from tqdm import tqdm

        names = tqdm(classnames)
    columns = []
    with torch.no_grad():
        for name in names:
            tokens = tokenizer(_prompts([name], templates)).to(device)
            embeddings = F.normalize(model.encode_text(tokens), dim=-1)  # (n_templates, D)
            mean = embeddings.mean(dim=0)
            mean /= mean.norm()
            columns.append(mean)
    return torch.stack(columns, dim=1).to(device)
