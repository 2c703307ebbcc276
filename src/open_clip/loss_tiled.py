"""Memory-linear (tiled) CLIP and SigLIP losses.

Owns the custom autograd functions that compute the contrastive losses without ever holding the
full (M, K) logit matrix: the column (text) side is streamed in blocks of `chunk_size`, the
softmax loss keeps an online log-sum-exp per row, and backward recomputes each block instead of
saving it. Extra memory is the gradients plus two (M, chunk_size) blocks, instead of several
(M, K) matrices; compute is one extra block matmul in backward (the recompute), about what the
plain path spends on its second logit matrix.

Block logits are `z = s * (A @ C.T) + b`; the plain path computes `(s * A) @ C.T + b`, which
differs only in rounding. Block arithmetic is float32 even for half inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["tiled_softmax_loss", "tiled_sigmoid_loss"]


def _blocks(num_cols: int, chunk_size: int):
    for start in range(0, num_cols, chunk_size):
        yield start, min(start + chunk_size, num_cols)


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Block arithmetic and accumulators: float32 at least (float64 inputs stay float64)."""
    return torch.promote_types(t.dtype, torch.float32)


def _block_logits(rows, cols, scale, bias, start, stop) -> torch.Tensor:
    """z = rows @ (s * cols[start:stop]).T + b, (M, w). Scaling the (w, D) column block instead of
    the (M, w) result, and adding the bias inside the GEMM, saves two passes over the block."""
    acc = _acc_dtype(rows)
    scaled_cols = cols[start:stop] * scale.to(cols.dtype)
    if bias is not None and rows.dtype == acc:
        return torch.addmm(bias.to(acc), rows, scaled_cols.T)
    z = (rows @ scaled_cols.T).to(acc)
    if bias is not None:
        z.add_(bias.to(acc))
    return z


def _positive_slice(label_offset: int, num_rows: int, start: int, stop: int):
    """Rows whose positive column (row + label_offset) lies in [start, stop): (row index, col index)."""
    r0 = max(0, start - label_offset)
    r1 = min(num_rows, stop - label_offset)
    if r0 >= r1:
        return None
    return r0, r1, r0 + label_offset - start


def _positives(z, label_offset: int, start: int, stop: int):
    """View of the block's positive logits (the shifted diagonal), with the first row index."""
    pos = _positive_slice(label_offset, z.shape[0], start, stop)
    if pos is None:
        return None, 0
    r0, r1, c0 = pos
    return torch.diagonal(z[r0:r1, c0 : c0 + (r1 - r0)]), r0


def _as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _stream_backward(ctx, grad_loss, block_grad):
    """Recompute each block, turn it into dL/dz with `block_grad(z, start, stop)` (in place
    allowed; for a unit upstream gradient), and accumulate the gradients of (rows, cols, scale,
    bias). The upstream gradient is applied once at the end, on the (N, D) results."""
    rows, cols, scale, bias = ctx.saved_tensors
    need_rows, need_cols, need_scale, need_bias = ctx.needs_input_grad[:4]
    acc = _acc_dtype(rows)
    # rows_grad accumulates G @ C (unscaled): it gives both dL/dA = s * G @ C and
    # dL/ds = sum_ij G_ij A_i.C_j = <G @ C, A>.
    rows_grad = torch.zeros(rows.shape, device=rows.device, dtype=acc)
    cols_grad = torch.empty(cols.shape, device=rows.device, dtype=acc) if need_cols else None
    bias_grad = torch.zeros((), device=rows.device, dtype=acc)
    with torch.autocast(device_type=rows.device.type, enabled=False):  # match the forward's arithmetic
        for start, stop in _blocks(cols.shape[0], ctx.chunk_size):
            g = block_grad(_block_logits(rows, cols, scale, bias, start, stop), start, stop)  # (M, w)
            if need_bias and bias is not None:
                bias_grad += g.sum()
            g_mm = g.to(rows.dtype)
            if g_mm.dtype == acc:
                rows_grad.addmm_(g_mm, cols[start:stop])  # in place: no (M, D) temporary per block
            else:
                rows_grad += (g_mm @ cols[start:stop]).to(acc)
            if cols_grad is not None:
                cols_grad[start:stop] = g_mm.T @ rows
    upstream = grad_loss.to(acc)
    grad_scale = None
    if need_scale:
        grad_scale = torch.dot(rows_grad.flatten(), rows.to(acc).flatten()) * upstream
        grad_scale = grad_scale.reshape(scale.shape).to(scale.dtype)
    factor = scale.to(acc) * upstream
    grad_rows = rows_grad.mul_(factor).to(rows.dtype) if need_rows else None
    grad_cols = cols_grad.mul_(factor).to(cols.dtype) if cols_grad is not None else None
    grad_bias = (bias_grad * upstream).reshape(bias.shape).to(bias.dtype) if need_bias and bias is not None else None
    return grad_rows, grad_cols, grad_scale, grad_bias


class _TiledSoftmaxLoss(torch.autograd.Function):
    """Mean cross-entropy of rows (and optionally columns) of `s * A @ C.T + b`, streamed by column blocks."""

    @staticmethod
    def forward(ctx, rows, cols, scale, bias, chunk_size, label_offset, symmetric):
        num_rows, num_cols = rows.shape[0], cols.shape[0]
        acc = _acc_dtype(rows)
        run_max = torch.full((num_rows,), float("-inf"), device=rows.device, dtype=acc)
        run_sum = torch.zeros(num_rows, device=rows.device, dtype=acc)
        positives = torch.zeros(num_rows, device=rows.device, dtype=acc)
        col_lse = torch.empty(num_cols if symmetric else 0, device=rows.device, dtype=acc)
        for start, stop in _blocks(num_cols, chunk_size):
            z = _block_logits(rows, cols, scale, bias, start, stop)
            diag, r0 = _positives(z, label_offset, start, stop)
            if diag is not None:
                positives[r0 : r0 + diag.shape[0]] = diag
            if symmetric:  # every row is in the block, so column log-sum-exps are complete here
                col_lse[start:stop] = torch.logsumexp(z, dim=0)
            # Online log-sum-exp over the row: rescale the running sum to the new running max.
            new_max = torch.maximum(run_max, z.amax(dim=1))
            run_sum = run_sum * torch.exp(run_max - new_max) + z.sub_(new_max[:, None]).exp_().sum(dim=1)
            run_max = new_max
        row_lse = run_max + torch.log(run_sum)
        loss = (row_lse - positives).mean()
        if symmetric:
            loss = (loss + (col_lse - positives).mean()) / 2
        ctx.save_for_backward(rows, cols, scale, bias)
        ctx.row_lse, ctx.col_lse = row_lse, col_lse
        ctx.chunk_size, ctx.label_offset, ctx.symmetric = chunk_size, label_offset, symmetric
        return loss.to(rows.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        rows, cols = ctx.saved_tensors[:2]
        num_rows, num_cols = rows.shape[0], cols.shape[0]
        # For a unit upstream gradient, dL/dz = (softmax_row / M + softmax_col / K) / 2 minus the
        # same weights at the positives (row term only, not halved, when not symmetric). Folding
        # log(M), log(K) into the log-sum-exp shifts makes each term a single sub + exp.
        halve = math.log(2) if ctx.symmetric else 0.0
        row_shift = ctx.row_lse + (math.log(num_rows) + halve)
        col_shift = ctx.col_lse + (math.log(num_cols) + halve) if ctx.symmetric else None
        positive_weight = (1 / num_rows + 1 / num_cols) / 2 if ctx.symmetric else 1 / num_rows

        def block_grad(z, start, stop):
            g = None
            if ctx.symmetric:
                g = torch.sub(z, col_shift[None, start:stop]).exp_()
            p_row = z.sub_(row_shift[:, None]).exp_()  # reuses z's storage
            g = p_row if g is None else g.add_(p_row)
            diag, _ = _positives(g, ctx.label_offset, start, stop)
            if diag is not None:
                diag.sub_(positive_weight)
            return g

        return (*_stream_backward(ctx, grad_loss, block_grad), None, None, None)


class _TiledSigmoidLoss(torch.autograd.Function):
    """SigLIP loss `-sum_ij logsigmoid(y_ij z_ij) / M`, streamed by column blocks."""

    @staticmethod
    def forward(ctx, rows, cols, scale, bias, chunk_size, negative_only):
        total = torch.zeros((), device=rows.device, dtype=_acc_dtype(rows))
        for start, stop in _blocks(cols.shape[0], chunk_size):
            z = _block_logits(rows, cols, scale, bias, start, stop)
            # -logsigmoid(-z) = softplus(z) for negatives; -logsigmoid(z) = softplus(z) - z for positives.
            if not negative_only:
                diag, _ = _positives(z, 0, start, stop)
                if diag is not None:
                    total -= diag.sum()
            total -= F.logsigmoid(z.neg_()).sum()  # exact softplus(z); F.softplus thresholds at 20
        ctx.save_for_backward(rows, cols, scale, bias)
        ctx.chunk_size, ctx.negative_only = chunk_size, negative_only
        return (total / rows.shape[0]).to(rows.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        num_rows = ctx.saved_tensors[0].shape[0]

        def block_grad(z, start, stop):
            g = z.sigmoid_()  # d softplus(z)/dz = sigmoid(z)
            if not ctx.negative_only:
                diag, _ = _positives(g, 0, start, stop)
                if diag is not None:
                    diag.sub_(1.0)
            return g

        # The 1/M normalisation is linear: apply it with the upstream gradient, on (N, D) results.
        return (*_stream_backward(ctx, grad_loss / num_rows, block_grad), None, None)


def _check_chunk(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def tiled_softmax_loss(
    rows: torch.Tensor,
    cols: torch.Tensor,
    logit_scale,
    logit_bias: torch.Tensor | None = None,
    *,
    chunk_size: int,
    label_offset: int = 0,
    symmetric: bool = False,
) -> torch.Tensor:
    """Cross-entropy contrastive loss over `z = (s * rows) @ cols.T + b` without materialising `z`.

    Row i's positive is column `i + label_offset`. The result is the mean row cross-entropy;
    with `symmetric` (square `z`, offset 0) it is the average of the row and column (i.e. the
    transposed matrix's row) cross-entropies, as in CLIP's image-to-text plus text-to-image loss.
    At most (rows, chunk_size) logits exist at a time.
    """
    _check_chunk(chunk_size)
    if label_offset < 0 or label_offset + rows.shape[0] > cols.shape[0]:
        raise ValueError(
            f"label_offset={label_offset} with {rows.shape[0]} rows needs at least "
            f"{label_offset + rows.shape[0]} columns, got {cols.shape[0]}"
        )
    if symmetric and (rows.shape[0] != cols.shape[0] or label_offset != 0):
        raise ValueError(f"symmetric loss needs square logits and label_offset=0, got {rows.shape} x {cols.shape}")
    scale = _as_tensor(logit_scale, rows)
    # Autocast off: blocks are computed in the features' dtype (float32 arithmetic), the same way
    # in forward and in the backward recompute, so saved log-sum-exps match the recomputed blocks.
    with torch.autocast(device_type=rows.device.type, enabled=False):
        return _TiledSoftmaxLoss.apply(rows, cols, scale, logit_bias, chunk_size, label_offset, symmetric)


def tiled_sigmoid_loss(
    rows: torch.Tensor,
    cols: torch.Tensor,
    logit_scale,
    logit_bias: torch.Tensor | None = None,
    *,
    chunk_size: int,
    negative_only: bool = False,
) -> torch.Tensor:
    """SigLIP loss `-sum_ij logsigmoid(y_ij * z_ij) / len(rows)` with `y` = +1 on the diagonal
    (unless `negative_only`) and -1 elsewhere, without materialising `z`."""
    _check_chunk(chunk_size)
    scale = _as_tensor(logit_scale, rows)
    with torch.autocast(device_type=rows.device.type, enabled=False):
        return _TiledSigmoidLoss.apply(rows, cols, scale, logit_bias, chunk_size, negative_only)
