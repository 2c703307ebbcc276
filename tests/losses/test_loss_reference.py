"""Single-process loss values: golden fixtures (OpenCLIP 3.3 output) and naive O(N^2) references."""

import json
import math

import numpy as np
import pytest
import torch
from naive_losses import caption_cross_entropy, clip_global, distill, pair_logit, siglip

from open_clip.loss import ClipLoss, CoCaLoss, DistillClipLoss, SigLipLoss

CLOSE = dict(atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def golden(request):
    fixtures = request.config.rootpath / "tests" / "fixtures"
    inputs = {k: torch.from_numpy(v) for k, v in np.load(fixtures / "losses_inputs.npz").items()}
    return inputs, json.loads((fixtures / "losses.json").read_text())


@pytest.mark.parametrize("chunk", [None, 3])
def test_golden_clip_and_siglip(golden, chunk):
    x, ref = golden
    clip = ClipLoss(chunk_size=chunk)(x["image_features"], x["text_features"], x["logit_scale"])
    sig = SigLipLoss(chunk_size=chunk)(x["image_features"], x["text_features"], x["logit_scale"], x["logit_bias"])
    assert float(clip) == pytest.approx(ref["ClipLoss"], abs=1e-5)
    assert float(sig) == pytest.approx(ref["SigLipLoss"], abs=1e-5)


def test_golden_coca_and_distill(golden):
    x, ref = golden
    coca = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)(
        x["image_features"], x["text_features"], x["coca_logits"], x["coca_labels"], x["logit_scale"]
    )
    assert [float(v) for v in coca] == pytest.approx(
        [ref["CoCaLoss"]["contrastive_loss"], ref["CoCaLoss"]["caption_loss"]], abs=1e-5
    )
    dist = DistillClipLoss()(
        x["image_features"],
        x["text_features"],
        x["logit_scale"],
        x["dist_image_features"],
        x["dist_text_features"],
        x["dist_logit_scale"],
    )
    expected = [ref["DistillClipLoss"]["contrastive_loss"], ref["DistillClipLoss"]["distill_loss"]]
    assert [float(v) for v in dist] == pytest.approx(expected, abs=1e-5)


def test_plain_clip_is_bit_exact_with_scale_before_matmul(golden):
    # 3.3 computes (s * I) @ T.T and (s * T) @ I.T as two matmuls; the plain path must too.
    x, _ = golden
    image, text, scale = x["image_features"] * 3, x["text_features"] * 3, x["logit_scale"]
    labels = torch.arange(image.shape[0])
    ref = (
        torch.nn.functional.cross_entropy((scale * image) @ text.T, labels)
        + torch.nn.functional.cross_entropy((scale * text) @ image.T, labels)
    ) / 2
    assert torch.equal(ClipLoss()(image, text, scale), ref)


def _inputs(n=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n, d, generator=g, dtype=torch.float64),
        torch.randn(n, d, generator=g, dtype=torch.float64),
        torch.tensor(2.0, dtype=torch.float64),
        torch.tensor(-0.75, dtype=torch.float64),
    ]


def _value_and_grads(fn, tensors):
    leaves = [t.clone().requires_grad_() for t in tensors]
    loss = fn(*leaves)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss.detach(), grads


def _assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], **CLOSE)
    for g, w in zip(got[1], want[1]):
        if w is None:
            assert g is None or torch.count_nonzero(g) == 0 or torch.allclose(g, torch.zeros_like(g), atol=1e-6)
        else:
            torch.testing.assert_close(g, w, **CLOSE)


@pytest.mark.parametrize("chunk", [None, 2, 5])
@pytest.mark.parametrize("n", [1, 5])
def test_clip_matches_naive(chunk, n):
    x = _inputs(n)
    got = _value_and_grads(lambda i, t, s, b: ClipLoss(chunk_size=chunk)(i, t, s, b), x)
    want = _value_and_grads(lambda i, t, s, b: clip_global(i, t, s, b), x)
    _assert_same(got, want)


@pytest.mark.parametrize("chunk", [None, 2, 5])
@pytest.mark.parametrize("n", [1, 5])
def test_siglip_matches_naive(chunk, n):
    x = _inputs(n)
    got = _value_and_grads(lambda i, t, s, b: SigLipLoss(chunk_size=chunk)(i, t, s, b), x)
    want = _value_and_grads(lambda i, t, s, b: siglip(i, t, s, b), x)
    _assert_same(got, want)


def test_siglip_without_bias_matches_naive():
    x = _inputs(4)[:3]
    got = _value_and_grads(lambda i, t, s: SigLipLoss()(i, t, s, None), x)
    want = _value_and_grads(lambda i, t, s: siglip(i, t, s), x)
    _assert_same(got, want)


@pytest.mark.parametrize("chunk", [None, 2])
def test_coca_matches_naive(chunk):
    image, text, scale, _ = _inputs(4)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 7, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1, 2, 0], [6, 0, 0], [3, 3, 5], [0, 4, 1]])
    loss = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=0.5, pad_id=0, chunk_size=chunk)
    x = [image, text, scale, logits]
    got = _value_and_grads(lambda i, t, s, lg: sum(loss(i, t, lg, labels, s)), x)
    want = _value_and_grads(
        lambda i, t, s, lg: 0.5 * clip_global(i, t, s) + 2.0 * caption_cross_entropy(lg, labels, 0), x
    )
    _assert_same(got, want)


def test_distill_matches_naive():
    image, text, scale, _ = _inputs(4)
    t_image, t_text, _, _ = _inputs(4, seed=3)
    t_scale = torch.tensor(5.0, dtype=torch.float64)

    def naive(i, t, s, ti, tt):
        student = [[pair_logit(i[a], t[b], s) for b in range(4)] for a in range(4)]
        teacher = [[pair_logit(ti[a], tt[b], t_scale) for b in range(4)] for a in range(4)]
        student_t = [list(col) for col in zip(*student)]
        teacher_t = [list(col) for col in zip(*teacher)]
        return clip_global(i, t, s) + (distill(student, teacher) + distill(student_t, teacher_t)) / 2

    x = [image, text, scale, t_image, t_text]
    got = _value_and_grads(lambda i, t, s, ti, tt: sum(DistillClipLoss()(i, t, s, ti, tt, t_scale)), x)
    _assert_same(got, _value_and_grads(naive, x))


def test_output_dict_keys():
    image, text, scale, bias = _inputs(3)
    logits, labels = torch.randn(3, 2, 5, dtype=torch.float64), torch.ones(3, 2, dtype=torch.long)
    assert set(ClipLoss()(image, text, scale, output_dict=True)) == {"contrastive_loss"}
    assert set(SigLipLoss()(image, text, scale, bias, output_dict=True)) == {"contrastive_loss"}
    coca = CoCaLoss(1.0, 1.0)(image, text, logits, labels, scale, output_dict=True)
    assert set(coca) == {"contrastive_loss", "caption_loss"}
    dist = DistillClipLoss()(image, text, scale, image, text, scale, output_dict=True)
    assert set(dist) == {"contrastive_loss", "distill_loss"}
    # Identical teacher and student: distillation is the entropy of the teacher's softmax.
    logits_per_image = scale * image @ text.T
    entropy = -(logits_per_image.softmax(1) * logits_per_image.log_softmax(1)).sum(1).mean()
    entropy_t = -(logits_per_image.T.softmax(1) * logits_per_image.T.log_softmax(1)).sum(1).mean()
    assert float(dist["distill_loss"]) == pytest.approx(float(entropy + entropy_t) / 2)


def test_coca_zero_clip_weight_and_all_pad():
    image, text, scale, _ = _inputs(2)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    clip_part, caption = CoCaLoss(1.0, 0.0)(image, text, logits, torch.zeros(2, 3, dtype=torch.long), scale)
    assert clip_part.dtype == torch.int64 and int(clip_part) == 0  # 3.3 quirk: an int64 zero
    assert math.isnan(float(caption))  # every label is pad: mean over zero elements


def test_coca_and_distill_accept_logit_bias():
    image, text, scale, bias = _inputs(3)
    logits, labels = torch.randn(3, 2, 5, dtype=torch.float64), torch.ones(3, 2, dtype=torch.long)
    with_bias = CoCaLoss(1.0, 1.0)(image, text, logits, labels, scale, logit_bias=bias)
    # Softmax cross-entropy is shift-invariant: the bias changes nothing but must be accepted.
    torch.testing.assert_close(with_bias[0], ClipLoss()(image, text, scale))
    out = DistillClipLoss()(image, text, scale, image, text, scale, logit_bias=bias, dist_logit_bias=bias)
    assert torch.isfinite(out[1])


def test_single_process_logits_add_bias_once():
    image, text, scale, bias = _inputs(3)
    per_image, per_text = ClipLoss().get_logits(image, text, scale, bias)
    torch.testing.assert_close(per_image, scale * image @ text.T + bias)
    torch.testing.assert_close(per_text, scale * text @ image.T + bias)


def test_label_cache_follows_batch_size():
    loss = ClipLoss(cache_labels=True)
    assert loss.get_ground_truth("cpu", 4).tolist() == [0, 1, 2, 3]
    assert loss.get_ground_truth("cpu", 4) is loss.get_ground_truth("cpu", 4)
    assert loss.get_ground_truth("cpu", 2).tolist() == [0, 1]
    local = ClipLoss(local_loss=True, rank=2, world_size=3)
    assert local.get_ground_truth("cpu", 2).tolist() == [4, 5]
    assert local.labels == {}  # not cached without cache_labels


def test_siglip_ground_truth():
    gt = SigLipLoss().get_ground_truth("cpu", torch.float32, 3)
    assert gt.tolist() == [[1, -1, -1], [-1, 1, -1], [-1, -1, 1]]
    assert (SigLipLoss().get_ground_truth("cpu", torch.float32, 2, negative_only=True) == -1).all()
