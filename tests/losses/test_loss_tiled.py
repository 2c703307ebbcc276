"""Memory-linear tiled losses: equal to the plain path, and provably never holding N x N logits."""

import pytest
import torch
from naive_losses import row_cross_entropy
from torch.utils._python_dispatch import TorchDispatchMode

from open_clip.loss import ClipLoss, SigLipLoss
from open_clip.loss_tiled import tiled_sigmoid_loss, tiled_softmax_loss

CLOSE = dict(atol=1e-5, rtol=1e-5)


def _inputs(n, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    return image, text, torch.tensor(14.3, dtype=dtype), torch.tensor(-3.0, dtype=dtype)


def _run(loss_fn, tensors):
    leaves = [t.clone().requires_grad_() for t in tensors]
    loss = loss_fn(*leaves)
    loss.backward()
    return [loss.detach()] + [leaf.grad for leaf in leaves]


def _assert_all_close(got, want):
    for g, w in zip(got, want):
        if w is None:
            assert g is None or torch.allclose(g, torch.zeros_like(g), atol=1e-6)
        else:
            torch.testing.assert_close(g, w, **CLOSE)


SIZES = [(1, 1), (1, 4), (7, 3), (16, 4), (33, 8), (64, 64), (64, 100), (100, 7)]


@pytest.mark.parametrize("n,chunk", SIZES, ids=[f"n{n}-c{c}" for n, c in SIZES])
@pytest.mark.parametrize("with_bias", [False, True])
def test_tiled_clip_equals_plain(n, chunk, with_bias):
    image, text, scale, bias = _inputs(n, 16)
    b = bias if with_bias else None

    def make(chunk_size):
        return lambda i, t, s: ClipLoss(chunk_size=chunk_size)(i, t, s, b)

    _assert_all_close(_run(make(chunk), [image, text, scale]), _run(make(None), [image, text, scale]))


@pytest.mark.parametrize("n,chunk", SIZES, ids=[f"n{n}-c{c}" for n, c in SIZES])
@pytest.mark.parametrize("with_bias", [False, True])
def test_tiled_siglip_equals_plain(n, chunk, with_bias):
    tensors = list(_inputs(n, 16))
    if not with_bias:
        tensors = tensors[:3] + [None]

    def make(chunk_size):
        def fn(i, t, s, *b):
            return SigLipLoss(chunk_size=chunk_size)(i, t, s, b[0] if b else None)

        return fn

    args = [t for t in tensors if t is not None]
    _assert_all_close(_run(make(chunk), args), _run(make(None), args))


@pytest.mark.parametrize("negative_only", [False, True])
def test_tiled_sigmoid_block_equals_plain_block(negative_only):
    image, text, scale, bias = _inputs(9, 8)
    plain = SigLipLoss()

    def tiled(i, t, s, b):
        return tiled_sigmoid_loss(i, t, s, b, chunk_size=4, negative_only=negative_only)

    def reference(i, t, s, b):
        return plain._loss(i, t, s, b, negative_only=negative_only)

    _assert_all_close(_run(tiled, [image, text, scale, bias]), _run(reference, [image, text, scale, bias]))


@pytest.mark.parametrize("offset", [0, 3, 6])
def test_tiled_softmax_with_label_offset_matches_naive(offset):
    # The local-loss layout: 4 rows against 10 columns, row i's positive at column offset + i.
    g = torch.Generator().manual_seed(5)
    rows, cols = (
        torch.randn(4, 5, generator=g, dtype=torch.float64),
        torch.randn(10, 5, generator=g, dtype=torch.float64),
    )
    scale = torch.tensor(1.7, dtype=torch.float64)

    def tiled(r, c, s):
        return tiled_softmax_loss(r, c, s, chunk_size=3, label_offset=offset)

    def naive(r, c, s):
        return row_cross_entropy(r, c, s, offset=offset)

    _assert_all_close(_run(tiled, [rows, cols, scale]), _run(naive, [rows, cols, scale]))


def test_tiled_half_precision_close_to_float32():
    image, text, scale, bias = _inputs(20, 8)
    full = ClipLoss(chunk_size=6)(image, text, scale)
    half = ClipLoss(chunk_size=6)(image.bfloat16(), text.bfloat16(), scale)
    assert half.dtype == torch.bfloat16
    assert float(half) == pytest.approx(float(full), rel=2e-2)


def test_tiled_rejects_bad_arguments():
    image, text, scale, _ = _inputs(4, 3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            ClipLoss(chunk_size=bad)
        with pytest.raises(ValueError, match="chunk_size"):
            SigLipLoss(chunk_size=bad)
    with pytest.raises(ValueError, match="label_offset"):
        tiled_softmax_loss(image, text, scale, chunk_size=2, label_offset=1)


class _LargestAllocation(TorchDispatchMode):
    """Records the largest output (in elements) of every aten op run while active."""

    def __init__(self):
        super().__init__()
        self.largest, self.largest_op, self.ops = 0, None, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.largest_op = t.numel(), func
        return out


def _largest_during_step(loss_module, n, d, with_bias):
    image, text, scale, bias = (t.requires_grad_() for t in _inputs(n, d))
    with _LargestAllocation() as probe:
        loss = loss_module(image, text, scale, bias if with_bias else None)
        forward_ops = probe.ops
        loss.backward()
    assert probe.ops > forward_ops  # the backward ran under the mode too
    assert image.grad is not None and text.grad is not None and scale.grad is not None
    return probe


@pytest.mark.parametrize("make_loss", [ClipLoss, SigLipLoss], ids=["clip", "siglip"])
@pytest.mark.parametrize("n", [96, 101])
def test_tiled_step_never_allocates_more_than_n_by_chunk(make_loss, n):
    # D <= chunk, so feature-sized tensors (N x D) stay under the N x chunk bound too.
    d, chunk = 8, 16
    probe = _largest_during_step(make_loss(chunk_size=chunk), n, d, with_bias=make_loss is SigLipLoss)
    assert probe.largest <= n * chunk, f"{probe.largest_op} produced {probe.largest} elements"
    # Control: the same probe sees the N x N logits of the plain path.
    plain = _largest_during_step(make_loss(), n, d, with_bias=make_loss is SigLipLoss)
    assert plain.largest >= n * n


def test_tiled_ignores_autocast():
    # Blocks use the features' dtype in forward and in the backward recompute, under autocast too.
    tensors = list(_inputs(12, 8))

    def under_autocast(i, t, s, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return SigLipLoss(chunk_size=5)(i, t, s, b) + ClipLoss(chunk_size=5)(i, t, s)

    def plain_fp32(i, t, s, b):
        return SigLipLoss()(i, t, s, b) + ClipLoss()(i, t, s)

    _assert_all_close(_run(under_autocast, tensors), _run(plain_fp32, tensors))
