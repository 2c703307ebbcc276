"""Matrix products whose rows come out bit-identical to those of a larger product.

Owns ``linear_rows`` (an affine map over the rows of a 2-D input) and the per-shape measurement
behind it.

Why: the fast paths of the towers (the text early stop, the pooled-only last block) apply each
linear layer to fewer rows than a plain forward does. Mathematically each output row depends on
its own input row only, but a CPU BLAS picks its kernel by matrix size: below a few rows it uses
small-matrix kernels, and when there are few rows but a long reduction it splits the reduction
over threads. Both round differently, so a product over 30 rows can differ in the last bit from
the same rows of a product over 3000. Where a row count makes no difference (it is the same
kernel) the results are identical, whatever the other rows hold and wherever a row sits.

So, once per weight shape, reduction kind and thread count, we measure the largest row count
whose rows still differ from those of a large product (the unstable prefix; in MKL it is 15 rows
for short reductions and about K/8 rows for reductions of K >= 1024 on 2 threads). A product is
then padded with zero rows to leave that prefix whenever the reference product (the row count a
plain forward would use) is outside it, and to exactly the reference row count when the
reference itself is inside it. Only CPU float32 products are padded: that is where bit-for-bit
equality with a plain forward is promised.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["linear_rows", "stable_row_count", "unstable_rows"]

# Candidate reference size for the measurement, and the share of it past which a measured
# boundary is not trusted (it could be an artefact of the reference being too small).
_MIN_REFERENCE_ROWS = 1024


def _product(kind: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if kind == "addmm":
        return torch.addmm(bias, x, weight.t())
    return torch.mm(x, weight.t())


@functools.cache
def unstable_rows(kind: str, out_features: int, in_features: int, threads: int) -> Optional[int]:
    """Largest row count whose rows differ from those of a large product (0 when every row count
    agrees), for ``kind`` 'addmm' (bias fused) or 'mm' on CPU float32 at ``threads`` threads;
    None when the boundary could not be established (callers then pad to the reference)."""
    from torch.utils._python_dispatch import _disable_current_modes

    big = max(_MIN_REFERENCE_ROWS, 2 * in_features)
    # Own generator: measuring must not move the user's RNG. Dispatch modes (FLOP counters,
    # tracers) are suspended so the measurement is not recorded as part of their program.
    gen = torch.Generator().manual_seed(0x5EED)
    with _disable_current_modes(), torch.no_grad():
        x = torch.randn(big, in_features, generator=gen)
        weight = torch.randn(out_features, in_features, generator=gen) * in_features**-0.5
        bias = torch.randn(out_features, generator=gen)
        reference = _product(kind, x, weight, bias)

        def agrees(rows: int) -> bool:
            return torch.equal(_product(kind, x[:rows], weight, bias), reference[:rows])

        low, high = 1, big  # smallest row count from which every larger one agrees (by bisection)
        while low < high:
            mid = (low + high) // 2
            if agrees(mid):
                high = mid
            else:
                low = mid + 1
        boundary = low - 1
        if boundary >= big // 2:
            return None
        # Bisection assumes the disagreeing counts form a prefix; check a spread above it.
        checks = {low, low + 1, low + 3, low + 17, 2 * low + 5, big // 2 + 1, big - 1}
        if not all(agrees(rows) for rows in sorted(checks) if low <= rows < big):
            return None
    return boundary


def stable_row_count(kind: str, weight: torch.Tensor, rows: int, reference_rows: int) -> int:
    """Row count to run a ``rows``-row product at so that its rows equal those of a
    ``reference_rows``-row product with the same ``weight`` (``rows <= reference_rows``)."""
    boundary = unstable_rows(kind, weight.shape[0], weight.shape[1], torch.get_num_threads())
    if boundary is None or reference_rows <= boundary:
        return max(rows, reference_rows)
    return max(rows, boundary + 1)


def _needs_stable_rows(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32


def linear_rows(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    reference_rows: int,
    fused_bias: bool = True,
) -> torch.Tensor:
    """``x @ weight.T + bias`` for a 2-D ``x`` (M, K), each row bit-identical to the same row of the
    product a plain forward computes over ``reference_rows`` rows.

    ``fused_bias``: the plain forward adds the bias inside the product (``F.linear`` on a contiguous
    input: addmm) rather than after it (``F.linear`` on a non-contiguous 3-D input: mm, then add);
    the two round differently."""
    if torch.is_autocast_enabled(x.device.type):
        # autocast casts F.linear's operands (bias included); its bits are not promised anyway
        return F.linear(x, weight, bias)
    rows = x.shape[0]
    kind = "addmm" if fused_bias and bias is not None else "mm"
    if _needs_stable_rows(x, weight):
        target = stable_row_count(kind, weight, rows, reference_rows)
        if target > rows:
            x = F.pad(x, (0, 0, 0, target - rows))
    if kind == "addmm":
        out = torch.addmm(bias, x, weight.t())
    else:
        out = torch.mm(x, weight.t())
        if bias is not None:
            out = out + bias
    return out[:rows] if out.shape[0] != rows else out
