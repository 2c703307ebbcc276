"""Blocks over packed tokens: the arithmetic of ``nn.MultiheadAttention`` on a subset of a batch's
tokens, bit for bit.

Owns ``TokenLayout`` (which tokens of a ``(batch, length)`` sequence batch a packed ``(T, C)``
tensor holds, and which of them a block must return), its builders for causal text and for
one-token pooling, ``mha_uses_fused_path`` and the two attention replicas below.

The fast paths run the token-wise parts of a block (norms, projections, MLP) on the tokens that
matter only, and the attention on the ``(batch, length)`` grid with zeros where tokens were skipped
(masked, or never read by a kept token). To give the very bits of a plain forward they repeat,
operation for operation, one of the two computations ``nn.MultiheadAttention`` picks for
self-attention:

* the sequence-first path (``F.multi_head_attention_forward``; taken in training, with grads, with
  a float mask...): in-projection on the ``(length, batch)`` layout, where torch fuses the bias
  into the product only when that layout is contiguous (one sequence), then
  ``scaled_dot_product_attention`` with the default scale;
* the fused path (``torch._native_multi_head_attention``; inference without a float mask): product
  without bias, bias added and queries scaled by ``_transform_bias_rescale_qkv``, then explicit
  ``softmax(q @ k^T) @ v``.

Linear layers go through ``linear_rows`` so that fewer rows round like the full product. Attention
keeps the full key length (a shorter one changes how the softmax sums round), but sequences whose
kept tokens all lie in the first ``n`` positions only need their first ``n`` queries: sequences
are stored sorted by length and attended in groups that share a query length, for the query
lengths measured to give the same rows as the full one (``_query_prefix_is_exact``).
"""

import functools
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .row_stable import linear_rows

# (no postponed annotations: TorchScript resolves TokenLayout's field types when a block is scripted)

__all__ = [
    "TokenLayout",
    "causal_text_layout",
    "pooled_token_layout",
    "mha_uses_fused_path",
    "sequence_first_attention",
    "fused_attention",
]


class TokenLayout(NamedTuple):
    """Tokens held by a packed ``(T, C)`` tensor, out of a ``(batch, length)`` batch.

    ``token_batch`` / ``token_pos`` (T,): the sequence slot and position of each packed row
    (packed rows are ordered by slot).
    ``query_rows`` (Q,): the packed rows a block returns, in that order (None: all of them). With
    more than one attention group, one row per slot, in slot order.
    ``fused``: attention repeats ``nn.MultiheadAttention``'s fused inference path (needs every
    token present and no mask) rather than its sequence-first path.
    ``groups``: ``[(first slot, end slot, query length, first row, end row), ...]`` covering the
    slots and their packed rows; attention of a group computes its first ``query length``
    queries only.
    ``scratch``: a zeroed ``(3, length * batch, C)`` buffer the blocks may reuse (inference only:
    every block writes the same positions, so the others stay zero).
    """

    batch: int
    length: int
    token_batch: torch.Tensor
    token_pos: torch.Tensor
    query_rows: Optional[torch.Tensor]
    fused: bool
    groups: list[tuple[int, int, int, int, int]]
    scratch: Optional[torch.Tensor]


@functools.cache
def _query_prefix_is_exact(heads: int, head_dim: int, length: int, queries: int, threads: int) -> bool:
    """Whether attention over the first ``queries`` queries of some sequences (full-length keys,
    values and causal mask) gives the same rows as attention over all queries of the whole batch,
    on CPU float32 at ``threads`` threads: a property of the kernel's blocking, measured once."""
    from torch.utils._python_dispatch import _disable_current_modes

    batch = 3
    gen = torch.Generator().manual_seed(0x5EED)
    with _disable_current_modes(), torch.no_grad():
        slots = torch.randn(3, length, batch * heads, head_dim, generator=gen)
        q, k, v = (s.transpose(0, 1).view(batch, heads, length, head_dim) for s in slots)
        mask = torch.full((length, length), float("-inf")).triu_(1).view(1, 1, length, length)
        full = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        part = F.scaled_dot_product_attention(
            q[1:, :, :queries], k[1:], v[1:], attn_mask=mask[:, :, :queries]
        )
    return torch.equal(part, full[1:, :, :queries])


def _query_lengths(heads: int, head_dim: int, length: int) -> list[int]:
    """Query lengths (ascending, ending with ``length``) that attend exactly like ``length``."""
    threads = torch.get_num_threads()
    # Few groups: each costs a kernel call, and CPU attention works in blocks of 32 queries.
    candidates = range(32, length, 32)
    return [n for n in candidates if _query_prefix_is_exact(heads, head_dim, length, n, threads)] + [length]


# A group of fewer sequences joins the next longer one: a call costs more than the queries it saves.
_MIN_GROUP = 4


def _attention_groups(sorted_lengths: list[int], choices: list[int]) -> list[tuple[int, int, int, int, int]]:
    groups: list[list[int]] = []  # [first slot, end slot, query length, first row, end row]
    row = 0
    for slot, n in enumerate(sorted_lengths):
        queries = next(c for c in choices if c >= n)
        if groups and groups[-1][2] == queries:
            groups[-1][1], groups[-1][4] = slot + 1, row + n
        else:
            groups.append([slot, slot + 1, queries, row, row + n])
        row += n
    merged: list[list[int]] = []
    for group in reversed(groups):
        if merged and group[1] - group[0] < _MIN_GROUP:
            merged[-1][0], merged[-1][3] = group[0], group[3]
        else:
            merged.append(group)
    return [tuple(g) for g in reversed(merged)]


def causal_text_layout(
    lengths: list[int], length: int, device: torch.device, heads: int, head_dim: int, bitwise: bool
) -> tuple[TokenLayout, torch.Tensor]:
    """Layout of causal text rows of which row b is read at position ``lengths[b] - 1`` (host ints),
    out of ``length``: each row keeps its first ``lengths[b]`` tokens and the last block returns
    the pooled token of each row. Rows are stored in slots sorted by length, so that rows of
    similar length attend together; with ``bitwise`` the groups use only query lengths measured
    to be exact, otherwise (not CPU float32) one group attends over the longest row.

    Returns the layout and ``rows`` (B,): the input row stored in each slot; the last block's
    outputs come in slot order."""
    batch = len(lengths)
    order = sorted(range(batch), key=lengths.__getitem__)
    sorted_lengths = [lengths[b] for b in order]
    total = sum(lengths)
    counts = torch.tensor(sorted_lengths, dtype=torch.long)
    ends = counts.cumsum(0)
    token_batch = torch.repeat_interleave(torch.arange(batch), counts, output_size=total)
    token_pos = torch.arange(total) - (ends - counts)[token_batch]
    if bitwise:
        groups = _attention_groups(sorted_lengths, _query_lengths(heads, head_dim, length))
    else:
        groups = [(0, batch, length, 0, total)]
    layout = TokenLayout(
        batch,
        length,
        token_batch.to(device, non_blocking=True),
        token_pos.to(device, non_blocking=True),
        (ends - 1).to(device, non_blocking=True),
        False,
        groups,
        None,
    )
    return layout, torch.tensor(order, dtype=torch.long).to(device, non_blocking=True)


def pooled_token_layout(batch: int, length: int, position: int, device: torch.device, fused: bool) -> TokenLayout:
    """Layout of a full ``(batch, length)`` batch packed batch-major, whose last block returns
    only the token at ``position`` of each sequence (a class token)."""
    token_batch = torch.arange(batch, device=device).repeat_interleave(length)
    token_pos = torch.arange(length, device=device).repeat(batch)
    query_rows = torch.arange(batch, device=device) * length + position
    groups = [(0, batch, length, 0, batch * length)]
    return TokenLayout(batch, length, token_batch, token_pos, query_rows, fused, groups, None)


def with_scratch(layout: TokenLayout, x: torch.Tensor) -> TokenLayout:
    """``layout`` with a zeroed slot buffer for ``x``'s width and dtype when grad mode is off (with
    it, attention would save views of a buffer that the next block overwrites)."""
    if layout.fused or torch.is_grad_enabled():
        return layout
    scratch = x.new_zeros(3, layout.length * layout.batch, x.shape[1])
    return layout._replace(scratch=scratch)


def mha_uses_fused_path(attn: nn.MultiheadAttention, x: torch.Tensor, float_mask: bool) -> bool:
    """Whether ``attn(x, x, x, need_weights=False)`` (self-attention of a batch-first ``x``) takes
    torch's fused inference path, by the conditions ``nn.MultiheadAttention`` checks."""
    if float_mask or not torch.backends.mha.get_fastpath_enabled():
        return False
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if (
        weight is None
        or bias is None
        or x.dtype != weight.dtype
        or x.dtype != bias.dtype
        or attn.training
        or attn.num_heads % 2
        or not attn.batch_first
        or attn.bias_k is not None
        or attn.bias_v is not None
        or attn.add_zero_attn
        or not attn._qkv_same_embed_dim
        or torch.is_autocast_enabled()
    ):
        return False
    tensors = (x, weight, bias, attn.out_proj.weight, attn.out_proj.bias)
    if x.device.type not in ("cpu", "cuda") or torch.overrides.has_torch_function(tensors):
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def _query_coordinates(layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
    if layout.query_rows is None:
        return layout.token_batch, layout.token_pos
    return layout.token_batch[layout.query_rows], layout.token_pos[layout.query_rows]


def sequence_first_attention(
    attn: nn.MultiheadAttention,
    h: torch.Tensor,
    layout: TokenLayout,
    attn_mask: Optional[torch.Tensor],
) -> torch.Tensor:
    """Self-attention outputs (Q, C) at the layout's query tokens of the packed, normed tokens ``h``
    (T, C), as ``F.multi_head_attention_forward`` computes them; ``attn_mask`` None or an additive
    (length, length) mask that hides every skipped token from every kept one."""
    tokens, width = h.shape
    batch, length = layout.batch, layout.length
    heads = attn.num_heads
    reference = length * batch
    qkv = linear_rows(h, attn.in_proj_weight, attn.in_proj_bias, reference, fused_bias=batch == 1)
    index = layout.token_pos * batch + layout.token_batch  # rows of the (length, batch) layout
    slots = layout.scratch
    if slots is None or slots.dtype != qkv.dtype:  # (autocast computes qkv in 16 bits)
        slots = qkv.new_zeros(3, reference, width)
    slots.index_copy_(1, index, qkv.view(tokens, 3, width).transpose(0, 1))
    q, k, v = (s.view(length, batch * heads, -1).transpose(0, 1).view(batch, heads, length, -1) for s in slots)
    mask = None if attn_mask is None else attn_mask.to(h.dtype).view(1, 1, length, length)
    dropout = attn.dropout if attn.training else 0.0
    if len(layout.groups) == 1 and layout.groups[0][2] == length:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, H, L, hd)
        query_batch, query_pos = _query_coordinates(layout)
        rows = out.permute(2, 0, 1, 3)[query_pos, query_batch].reshape(-1, width)  # (Q, C)
    else:
        parts = []
        for first, end, queries, first_row, end_row in layout.groups:
            group_mask = None if mask is None else mask[:, :, :queries]
            out = F.scaled_dot_product_attention(
                q[first:end, :, :queries], k[first:end], v[first:end], attn_mask=group_mask, dropout_p=dropout
            )
            if layout.query_rows is None:
                picked = slice(first_row, end_row)  # every token of the group's slots
            else:
                picked = layout.query_rows[first:end]  # one token per slot
            batch_index, pos_index = layout.token_batch[picked] - first, layout.token_pos[picked]
            parts.append(out.permute(2, 0, 1, 3)[pos_index, batch_index])
        rows = torch.cat(parts).reshape(-1, width)  # (Q, C), slot order
    return linear_rows(rows, attn.out_proj.weight, attn.out_proj.bias, reference)


def fused_attention(attn: nn.MultiheadAttention, h: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Self-attention outputs (Q, C) at the layout's query tokens as torch's fused inference path
    computes them; every token of the batch present in ``h`` (T = batch * length, batch-major)."""
    batch, length = layout.batch, layout.length
    width = h.shape[1]
    reference = batch * length
    qkv = linear_rows(h, attn.in_proj_weight, None, reference)  # bias added below, as the fused path does
    q, k, v = torch._transform_bias_rescale_qkv(qkv.view(batch, length, 3 * width), attn.in_proj_bias, attn.num_heads)
    out = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1), v)  # (B, H, L, hd)
    if layout.query_rows is None:  # every token, batch-major: no gather needed
        rows = out.transpose(1, 2).reshape(reference, width)
    else:
        rows = out.transpose(1, 2)[_query_coordinates(layout)].reshape(-1, width)  # (Q, C)
    return linear_rows(rows, attn.out_proj.weight, attn.out_proj.bias, reference)
