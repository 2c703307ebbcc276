"""Loss construction (`create_loss` precedence, Horovod) and bad-input errors."""

import math
from types import SimpleNamespace

import pytest
import torch

from open_clip.loss import ClipLoss, CoCaLoss, DistillClipLoss, SigLipLoss, build_loss, create_loss


def _args(**overrides):
    # The training app's defaults for the flags create_loss reads.
    args = dict(
        model="ViT-B-32",
        distill=False,
        siglip=False,
        local_loss=False,
        gather_with_grad=False,
        rank=0,
        world_size=1,
        horovod=False,
        coca_caption_loss_weight=2.0,
        coca_contrastive_loss_weight=1.0,
        loss_dist_impl=None,
    )
    args.update(overrides)
    return SimpleNamespace(**args)


def test_create_loss_precedence():
    assert type(create_loss(_args())) is ClipLoss
    assert type(create_loss(_args(siglip=True))) is SigLipLoss
    assert type(create_loss(_args(model="coca_ViT-B-32", siglip=True))) is CoCaLoss  # CoCa wins over siglip
    assert type(create_loss(_args(model="CoCa-x", distill=True))) is DistillClipLoss  # distill wins over all


def test_create_loss_passes_settings():
    clip = create_loss(_args(local_loss=True, gather_with_grad=True, rank=1, world_size=4))
    assert (clip.local_loss, clip.gather_with_grad, clip.cache_labels, clip.rank, clip.world_size) == (
        True,
        True,
        True,
        1,
        4,
    )
    coca = create_loss(_args(model="coca_roberta", coca_caption_loss_weight=3.0, coca_contrastive_loss_weight=0.5))
    assert (coca.caption_loss_weight, coca.clip_loss_weight, coca.pad_id) == (3.0, 0.5, 0)
    sig = create_loss(_args(siglip=True, rank=2, world_size=3))
    assert (sig.rank, sig.world_size, sig.dist_impl, sig.cache_labels) == (2, 3, "bidir", False)
    assert create_loss(_args(siglip=True, loss_dist_impl="gather")).dist_impl == "gather"
    assert create_loss(_args(siglip=True, loss_chunk_size=64)).chunk_size == 64
    assert build_loss(chunk_size=32).chunk_size == 32


def test_horovod_errors_name_horovod():
    with pytest.raises(ImportError, match="horovod"):
        ClipLoss(use_horovod=True, world_size=2)
    with pytest.raises(ValueError, match="Horovod not currently supported for SigLip"):
        create_loss(_args(siglip=True, horovod=True))


def test_distill_rejects_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        build_loss(distill=True, chunk_size=8)
    with pytest.raises(ValueError, match="chunk_size"):
        DistillClipLoss(chunk_size=8)


def test_unknown_dist_impl():
    with pytest.raises(ValueError, match="bidir"):
        SigLipLoss(dist_impl="ring")


@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("loss_cls", [ClipLoss, SigLipLoss])
def test_feature_shape_mismatch(loss_cls, chunk):
    loss = loss_cls(chunk_size=chunk)
    scale = torch.tensor(10.0)
    for image, text in [
        (torch.randn(4, 8), torch.randn(3, 8)),  # batch sizes differ
        (torch.randn(4, 8), torch.randn(4, 6)),  # dims differ
        (torch.randn(4, 8), torch.randn(8)),  # not (N, D)
        (torch.randn(1, 8), torch.randn(4, 8)),  # would broadcast
    ]:
        with pytest.raises(ValueError, match=r"\(4, 8\)|\(1, 8\)"):
            loss(image, text, scale, None)


@pytest.mark.parametrize("bad", [math.inf, math.nan, -math.inf])
def test_non_finite_logit_scale(bad):
    # A tensor is not read (no wait for the device): the loss comes out non-finite, as in 3.3, and
    # the training app skips the step. A Python number is refused.
    image, text = torch.randn(3, 4), torch.randn(3, 4)
    for loss in (ClipLoss(), ClipLoss(chunk_size=2)):
        assert not torch.isfinite(loss(image, text, torch.tensor(bad)))
        with pytest.raises(ValueError, match="logit_scale"):
            loss(image, text, bad)
    assert not torch.isfinite(SigLipLoss()(image, text, torch.tensor(bad), torch.tensor(0.0)))
    assert not torch.isfinite(SigLipLoss()(image, text, torch.tensor(1.0), torch.tensor(bad)))
    with pytest.raises(ValueError, match="logit_bias"):
        SigLipLoss()(image, text, torch.tensor(1.0), bad)
    assert not all(torch.isfinite(x) for x in DistillClipLoss()(image, text, 1.0, image, text, torch.tensor(bad)))
    with pytest.raises(ValueError, match="dist_logit_scale"):
        DistillClipLoss()(image, text, torch.tensor(1.0), image, text, bad)


def test_coca_label_errors():
    image, text, scale = torch.randn(2, 4), torch.randn(2, 4), torch.tensor(5.0)
    logits = torch.randn(2, 3, 10)
    loss = CoCaLoss(1.0, 1.0, pad_id=0)
    with pytest.raises(ValueError, match=r"\[10, 12\]"):
        loss(image, text, logits, torch.tensor([[1, 10, 0], [12, 3, 0]]), scale)
    with pytest.raises(ValueError, match="-3"):
        loss(image, text, logits, torch.tensor([[1, -3, 0], [2, 3, 0]]), scale)
    with pytest.raises(ValueError, match=r"\(2, 3, 10\).*\(2, 4\)"):
        loss(image, text, logits, torch.ones(2, 4, dtype=torch.long), scale)
    # pad_id outside the vocabulary is fine: it is ignored, not looked up.
    out = CoCaLoss(1.0, 1.0, pad_id=-100)(image, text, logits, torch.tensor([[1, -100, 2], [3, 4, -100]]), scale)
    assert torch.isfinite(out[1])
