"""Exact early-stop text encoding for causal text towers that pool at a token-given position.

In a causal tower the output at position j depends only on positions <= j. With ``argmax`` / ``eos``
pooling the pooled position of every row is known from the tokens, so nothing after it needs
computing. Two exact strategies build on that:

* trimming (``trim_text_for_pooling``): encode the batch up to its longest pooled position;
* length buckets (``encode_pooled_text_in_buckets``): sort the rows by pooled position, split them
  into groups (``plan_text_buckets`` picks the split points with a small dynamic programme over an
  estimated cost), encode each group trimmed to its own longest row and restore the input order.
  Rows of a text transformer don't interact, so each row's result is the same up to float
  rounding (the matrix products see other row counts), well within 1e-5.

Real caption batches are dominated by short texts with a long tail (CLIP captions: mean ~17 of 77
tokens, but a batch of 64 usually holds one 40-77 token caption), so trimming alone gains little
and buckets gain most. Used by ``TextTransformer.forward`` and ``CLIP.encode_text``.
"""

from collections.abc import Callable
from typing import Optional

import torch

__all__ = [
    "text_pool_positions",
    "trim_text_for_pooling",
    "plan_text_buckets",
    "encode_pooled_text_in_buckets",
    "DEFAULT_GROUP_COST",
    "DEFAULT_GROUP_COST_ACCELERATOR",
]

# Fixed cost of encoding one extra group, in token-equivalents (one token = one row position
# through the whole tower). Covers per-call overhead (weight reads, op dispatch) and the lower
# efficiency of smaller matrix products. On CPU (measured: 2 threads, width 512) it is about one
# full-length row. On accelerators a token is far cheaper than a launch sequence, so the (not yet
# measured) default there is much larger: only big batches get split.
DEFAULT_GROUP_COST = 96.0
DEFAULT_GROUP_COST_ACCELERATOR = 4096.0


def text_pool_positions(
    text: torch.Tensor, pool_type: str = "argmax", eos_token_id: Optional[int] = None
) -> Optional[torch.Tensor]:
    """Per-row position [B] that ``text_global_pool`` reads for token-dependent pool types
    (``argmax``: first largest id; ``eos``: first ``eos_token_id``, 0 if absent), else None."""
    if pool_type == "argmax":
        return text.argmax(dim=-1)
    if pool_type == "eos" and eos_token_id is not None:
        return (text == eos_token_id).int().argmax(dim=-1)
    return None


def trim_text_for_pooling(
    text: torch.Tensor, pool_type: str, eos_token_id: Optional[int] = None, causal: bool = True
) -> torch.Tensor:
    """Return the shortest prefix of ``text`` [B, L] whose causal encoding pools exactly like the
    full sequence: ``text[:, :max(pool position) + 1]``. Returns ``text`` itself when not exact
    (non-causal attention, pool types that don't depend on the tokens) or while tracing (a traced
    graph must not bake in one batch's length)."""
    if not causal or torch.jit.is_tracing() or text.shape[0] == 0:
        return text
    positions = text_pool_positions(text, pool_type, eos_token_id)
    if positions is None:
        return text
    length = int(positions.max().item()) + 1
    if length >= text.shape[1]:
        return text
    return text[:, :length]


def _group_cost(rows: int, length: int, attn_scale: float, group_cost: float) -> float:
    # linear layers cost ~rows*length; attention adds a term growing with length (per token ~L)
    return rows * length * (1.0 + length / attn_scale) + group_cost


def plan_text_buckets(
    lengths: list[int], width: int = 512, group_cost: float = DEFAULT_GROUP_COST
) -> list[tuple[int, int]]:
    """Split rows sorted by ``lengths`` (ascending, >= 1) into contiguous groups minimising
    ``sum_g n_g * L_g * (1 + L_g / (0.75 * width)) + group_cost * #groups`` (L_g: the group's
    longest row). Returns ``[(end_row, L_g), ...]``; group g spans rows ``[end_{g-1}, end_g)``.

    The programme runs over distinct lengths (at most the context length), not rows, so it is cheap
    for any batch size. ``0.75 * width`` weighs attention (2·L·W MACs per token vs 12·W² for the
    linear layers, but attention runs several times less efficiently per MAC on CPU)."""
    if not lengths:
        return []
    # distinct lengths and the row count up to (and including) each
    values: list[int] = []
    ends: list[int] = []
    for i, n in enumerate(lengths):
        if values and n < values[-1]:
            raise ValueError(f"lengths must be sorted ascending, got {n} after {values[-1]}")
        if values and n == values[-1]:
            ends[-1] = i + 1
        else:
            values.append(n)
            ends.append(i + 1)
    attn_scale = 0.75 * max(width, 1)
    best = [0.0] * (len(values) + 1)  # best[j]: cost of the first j distinct lengths
    split = [0] * (len(values) + 1)
    for j in range(1, len(values) + 1):
        best[j] = float("inf")
        for i in range(j):  # last group = distinct lengths i .. j-1
            rows = ends[j - 1] - (ends[i - 1] if i else 0)
            cost = best[i] + _group_cost(rows, values[j - 1], attn_scale, group_cost)
            if cost < best[j]:
                best[j], split[j] = cost, i
    groups: list[tuple[int, int]] = []
    j = len(values)
    while j > 0:
        groups.append((ends[j - 1], values[j - 1]))
        j = split[j]
    return groups[::-1]


def encode_pooled_text_in_buckets(
    text: torch.Tensor,
    encode_group: Callable[[torch.Tensor], torch.Tensor],
    pool_type: str,
    eos_token_id: Optional[int] = None,
    max_groups: int = 0,
    width: int = 512,
    group_cost: Optional[float] = None,
    token_features: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Encode ``text`` [B, L] with a causal, position-pooled tower, computing each row only up to
    its pooled position; the result equals ``encode_group(text)`` (to float rounding).

    ``encode_group(tokens)`` must encode and pool any row subset / prefix of ``text`` (it receives
    ``[n, L_g]`` with ``L_g <= L``) and return [n, ...]. With ``token_features`` [B, L, ...] (e.g.
    the token embeddings, computed once for the whole batch so that training backpropagates one
    embedding gradient rather than one per group) it is called as ``encode_group(tokens, features)``
    with the same rows / prefix of ``token_features``. ``max_groups``: 0 = automatic grouping
    (``plan_text_buckets`` with ``width`` / ``group_cost``; None = ``DEFAULT_GROUP_COST`` on CPU,
    ``DEFAULT_GROUP_COST_ACCELERATOR`` elsewhere), 1 = trim the whole batch only,
    k > 1 = k equal-count groups. Groups run in ascending length; results are returned in the
    input row order (gradients flow through the gather). Pool types that don't depend on the
    tokens are encoded at full length. Eager only (uses a Python callable)."""
    def encode(rows: Optional[torch.Tensor], length: int) -> torch.Tensor:
        tokens = text[:, :length] if rows is None else text[rows, :length]
        if token_features is None:
            return encode_group(tokens)
        features = token_features[:, :length] if rows is None else token_features[rows, :length]
        return encode_group(tokens, features)

    positions = text_pool_positions(text, pool_type, eos_token_id)
    if positions is None or text.shape[0] <= 1 or max_groups == 1 or torch.jit.is_tracing():
        return encode(None, trim_text_for_pooling(text, pool_type, eos_token_id).shape[1])
    lengths, order = torch.sort(positions + 1, stable=True)
    if max_groups > 1:
        groups, end = [], 0
        for chunk in lengths.tensor_split(max_groups):
            if chunk.numel():
                end += chunk.numel()
                groups.append((end, int(chunk[-1])))
    else:
        if group_cost is None:
            group_cost = DEFAULT_GROUP_COST if text.device.type == "cpu" else DEFAULT_GROUP_COST_ACCELERATOR
        groups = plan_text_buckets(lengths.tolist(), width, group_cost)
    if len(groups) == 1:  # one group: no reordering needed
        return encode(None, min(groups[0][1], text.shape[1]))
    outputs = []
    start = 0
    for end, length in groups:
        outputs.append(encode(order[start:end], min(length, text.shape[1])))
        start = end
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return torch.cat(outputs)[inverse]
