"""Contrastive training losses: CLIP (softmax), SigLIP (sigmoid), CoCa and distillation.

Owns `ClipLoss`, `CoCaLoss`, `DistillClipLoss`, `SigLipLoss`, and the loss factory
(`build_loss` with explicit settings, `create_loss(args)` as the training app's adapter).
Multi-process collectives live in `loss_distributed.py`; the memory-linear tiled kernels
(selected with `chunk_size=`) in `loss_tiled.py`.

Per-rank semantics match OpenCLIP 3.3: the loss is not divided by the world size, and
`local_loss` without `gather_with_grad` only back-propagates through the local features.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .loss_distributed import _HAS_DIST as has_distributed  # noqa: F401 (3.3's name for the flag)
from .loss_distributed import (
    NeighbourExchange,
    NeighbourExchangeBidir,
    dist,  # torch.distributed, which 3.3 exposed here (tests patch collectives through it)
    gather_features,
    neighbour_exchange,
    neighbour_exchange_bidir,
    neighbour_exchange_bidir_with_grad,
    neighbour_exchange_with_grad,
    require_horovod,
)
from .loss_tiled import tiled_sigmoid_loss, tiled_softmax_loss
from .optional_modules import optional_module_attributes

# `open_clip.loss.hvd`: horovod.torch or None, as in 3.3 (imported on first read).
__getattr__, __dir__ = optional_module_attributes(__name__, {"hvd": "horovod.torch"})

__all__ = [
    "ClipLoss",
    "CoCaLoss",
    "DistillClipLoss",
    "SigLipLoss",
    "build_loss",
    "create_loss",
    "gather_features",
    "neighbour_exchange",
    "neighbour_exchange_bidir",
    "neighbour_exchange_with_grad",
    "neighbour_exchange_bidir_with_grad",
    "NeighbourExchange",
    "NeighbourExchangeBidir",
]

SIGLIP_DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


def _check_pair(image_features, text_features, what: str = "image_features/text_features") -> None:
    """Both (N, D) with the same N and D; anything else would broadcast or mis-label silently."""
    if image_features.ndim != 2 or text_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"{what} must both be (N, D) with equal N and D, got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )


def _check_scalar(value, name: str) -> None:
    """One element; a Python number must also be finite. A tensor's value is not read (that would
    wait for the device every step): a non-finite scale gives a non-finite loss, as in 3.3, which
    the training app counts as a non-finite step."""
    if value is None:
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
    elif not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def _check_chunk_size(chunk_size) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


class ClipLoss(nn.Module):
    """CLIP's symmetric InfoNCE: mean of image-to-text and text-to-image cross-entropy.

    Args:
        local_loss: with several ranks, compute only the local rows against all gathered columns.
        gather_with_grad: autograd-aware all-gather (gradients reach every rank's features).
        cache_labels: keep the label tensor between calls (recomputed when the size changes).
        rank, world_size: this process's place in the default process group.
        use_horovod: gather with Horovod instead of torch.distributed (needs `horovod`).
        chunk_size: if set, use the memory-linear tiled loss with column blocks of this size.
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        *,
        chunk_size: int | None = None,
    ):
        super().__init__()
        if use_horovod:
            require_horovod()
        _check_chunk_size(chunk_size)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.chunk_size = chunk_size
        self.prev_num_logits = 0
        self.labels = {}

    def get_ground_truth(self, device, num_logits: int) -> torch.Tensor:
        """Class index of each row's positive: arange, shifted by rank for the local loss."""
        if self.prev_num_logits != num_logits or device not in self.labels:
            labels = torch.arange(num_logits, device=device, dtype=torch.long)
            if self.world_size > 1 and self.local_loss:
                labels = labels + num_logits * self.rank
            if self.cache_labels:
                self.labels[device] = labels
                self.prev_num_logits = num_logits
        else:
            labels = self.labels[device]
        return labels

    def _gather(self, image_features, text_features):
        return gather_features(
            image_features,
            text_features,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
            rank=self.rank,
            world_size=self.world_size,
            use_horovod=self.use_horovod,
        )

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        """Image-to-text and text-to-image logits, (rows, columns) as the loss sees them."""
        # `logit_scale * a @ b.T` scales the left matrix before the matmul, as 3.3 does (bit-exact).
        if self.world_size > 1:
            all_image, all_text = self._gather(image_features, text_features)
            if self.local_loss:
                logits_per_image = logit_scale * image_features @ all_text.T  # (B, W*B)
                logits_per_text = logit_scale * text_features @ all_image.T  # (B, W*B)
            else:
                logits_per_image = logit_scale * all_image @ all_text.T  # (W*B, W*B)
                if logit_bias is not None:
                    logits_per_image += logit_bias
                # A transposed view: the bias is already in (3.3 added it twice, once per name).
                return logits_per_image, logits_per_image.T
        else:
            logits_per_image = logit_scale * image_features @ text_features.T  # (B, B)
            logits_per_text = logit_scale * text_features @ image_features.T  # (B, B)
        if logit_bias is not None:
            logits_per_image += logit_bias
            logits_per_text += logit_bias
        return logits_per_image, logits_per_text

    def _tiled_contrastive(self, image_features, text_features, logit_scale, logit_bias):
        chunk = self.chunk_size
        if self.world_size == 1:
            return tiled_softmax_loss(
                image_features, text_features, logit_scale, logit_bias, chunk_size=chunk, symmetric=True
            )
        all_image, all_text = self._gather(image_features, text_features)
        if not self.local_loss:
            return tiled_softmax_loss(all_image, all_text, logit_scale, logit_bias, chunk_size=chunk, symmetric=True)
        offset = image_features.shape[0] * self.rank
        loss_image = tiled_softmax_loss(
            image_features, all_text, logit_scale, logit_bias, chunk_size=chunk, label_offset=offset
        )
        loss_text = tiled_softmax_loss(
            text_features, all_image, logit_scale, logit_bias, chunk_size=chunk, label_offset=offset
        )
        return (loss_image + loss_text) / 2

    def _contrastive(self, image_features, text_features, logit_scale, logit_bias=None):
        _check_pair(image_features, text_features)
        _check_scalar(logit_scale, "logit_scale")
        _check_scalar(logit_bias, "logit_bias")
        if self.chunk_size:
            return self._tiled_contrastive(image_features, text_features, logit_scale, logit_bias)
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale, logit_bias)
        labels = self.get_ground_truth(image_features.device, logits_per_image.shape[0])
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict: bool = False):
        """Loss for (B, D) image and text features and the (exponentiated) scale.

        Returns:
            The scalar loss, or `{"contrastive_loss": loss}` with `output_dict`.
        """
        loss = self._contrastive(image_features, text_features, logit_scale, logit_bias)
        return {"contrastive_loss": loss} if output_dict else loss


class CoCaLoss(ClipLoss):
    """Weighted CLIP loss plus captioning cross-entropy (padding ignored)."""

    def __init__(
        self,
        caption_loss_weight: float,
        clip_loss_weight: float,
        pad_id: int = 0,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        *,
        chunk_size: int | None = None,
    ):
        super().__init__(
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            cache_labels=cache_labels,
            rank=rank,
            world_size=world_size,
            use_horovod=use_horovod,
            chunk_size=chunk_size,
        )
        self.clip_loss_weight = clip_loss_weight
        self.caption_loss_weight = caption_loss_weight
        self.pad_id = pad_id
        self.caption_loss = nn.CrossEntropyLoss(ignore_index=pad_id)

    def _check_caption(self, logits, labels) -> None:
        if logits.ndim != 3 or labels.shape != logits.shape[:2]:
            raise ValueError(
                f"CoCa logits must be (B, L, V) and labels (B, L), got {tuple(logits.shape)} and {tuple(labels.shape)}"
            )

    def _caption_loss(self, logits, labels):
        # Label values are only read when the loss fails on them: a check up front would wait for
        # the device every step (on GPUs an out-of-range id is a device-side assert, as in 3.3).
        try:
            return self.caption_loss(logits.permute(0, 2, 1), labels)
        except (IndexError, RuntimeError) as e:
            vocab = logits.shape[-1]
            bad = ((labels < 0) | (labels >= vocab)) & (labels != self.pad_id)
            if labels.device.type != "cpu" or not bool(bad.any()):
                raise
            raise ValueError(
                f"CoCa labels must be in [0, {vocab}) or pad_id={self.pad_id}, got values "
                f"{labels[bad].unique()[:10].tolist()}"
            ) from e

    def forward(
        self,
        image_features,
        text_features,
        logits,
        labels,
        logit_scale,
        output_dict: bool = False,
        logit_bias=None,
    ):
        """CLIP part (weighted) and caption part (weighted).

        Returns:
            `(clip_loss, caption_loss)` or `{"contrastive_loss", "caption_loss"}` with `output_dict`.
        """
        self._check_caption(logits, labels)
        if self.clip_loss_weight:
            clip_loss = self.clip_loss_weight * self._contrastive(
                image_features, text_features, logit_scale, logit_bias
            )
        else:
            clip_loss = torch.tensor(0, device=logits.device)  # int64 zero, as in 3.3
        caption_loss = self.caption_loss_weight * self._caption_loss(logits, labels)
        if output_dict:
            return {"contrastive_loss": clip_loss, "caption_loss": caption_loss}
        return clip_loss, caption_loss


class DistillClipLoss(ClipLoss):
    """CLIP loss plus cross-entropy between teacher and student logit distributions."""

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        *,
        chunk_size: int | None = None,
    ):
        if chunk_size:
            raise ValueError(
                f"DistillClipLoss needs the full logits for its distillation term; chunk_size must be None, "
                f"got {chunk_size}"
            )
        super().__init__(local_loss, gather_with_grad, cache_labels, rank, world_size, use_horovod)

    @staticmethod
    def dist_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """Mean over rows of -sum_j softmax(teacher)_ij * log_softmax(student)_ij."""
        return -(teacher_logits.softmax(dim=1) * student_logits.log_softmax(dim=1)).sum(dim=1).mean(dim=0)

    def forward(
        self,
        image_features,
        text_features,
        logit_scale,
        dist_image_features,
        dist_text_features,
        dist_logit_scale,
        output_dict: bool = False,
        logit_bias=None,
        dist_logit_bias=None,
    ):
        """Returns `(contrastive_loss, distill_loss)` or the dict with those keys."""
        _check_pair(image_features, text_features)
        _check_pair(dist_image_features, dist_text_features, "dist_image_features/dist_text_features")
        if dist_image_features.shape[0] != image_features.shape[0]:
            raise ValueError(
                f"teacher and student batch sizes differ: {tuple(dist_image_features.shape)} vs "
                f"{tuple(image_features.shape)}"
            )
        for value, name in ((logit_scale, "logit_scale"), (dist_logit_scale, "dist_logit_scale")):
            _check_scalar(value, name)
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale, logit_bias)
        dist_per_image, dist_per_text = self.get_logits(
            dist_image_features, dist_text_features, dist_logit_scale, dist_logit_bias
        )
        labels = self.get_ground_truth(image_features.device, logits_per_image.shape[0])
        contrastive_loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        distill_loss = (
            self.dist_loss(dist_per_image, logits_per_image) + self.dist_loss(dist_per_text, logits_per_text)
        ) / 2
        if output_dict:
            return {"contrastive_loss": contrastive_loss, "distill_loss": distill_loss}
        return contrastive_loss, distill_loss


class SigLipLoss(nn.Module):
    """Sigmoid loss (SigLIP): every image-text pair is an independent binary classification.

    With several ranks, the local images are scored against every rank's texts, which arrive by
    the `dist_impl` schedule: `bidir` (ring both ways), `shift` (ring one way), `reduce`
    (all-reduce per rank) or `gather` (all-gather). All give the same value and gradients.
    `chunk_size` selects the memory-linear tiled kernel.
    """

    def __init__(
        self,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_impl: str | None = None,
        *,
        chunk_size: int | None = None,
    ):
        super().__init__()
        dist_impl = dist_impl or "bidir"
        if dist_impl not in SIGLIP_DIST_IMPLS:
            raise ValueError(f"dist_impl must be one of {SIGLIP_DIST_IMPLS} (or None for 'bidir'), got {dist_impl!r}")
        _check_chunk_size(chunk_size)
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.dist_impl = dist_impl
        self.chunk_size = chunk_size
        self.prev_num_logits = 0  # unused, kept for attribute compatibility
        self.labels = {}

    def get_ground_truth(self, device, dtype, num_logits: int, negative_only: bool = False) -> torch.Tensor:
        """+1 on the diagonal (positives) and -1 elsewhere; all -1 with `negative_only`."""
        labels = -torch.ones((num_logits, num_logits), device=device, dtype=dtype)
        if not negative_only:
            labels = 2 * torch.eye(num_logits, device=device, dtype=dtype) + labels
        return labels

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        logits = logit_scale * image_features @ text_features.T
        if logit_bias is not None:
            logits += logit_bias
        return logits

    def _loss(self, image_features, text_features, logit_scale, logit_bias=None, negative_only=False):
        if self.chunk_size:
            return tiled_sigmoid_loss(
                image_features,
                text_features,
                logit_scale,
                logit_bias,
                chunk_size=self.chunk_size,
                negative_only=negative_only,
            )
        logits = self.get_logits(image_features, text_features, logit_scale, logit_bias)
        labels = self.get_ground_truth(
            image_features.device, image_features.dtype, image_features.shape[0], negative_only
        )
        return -F.logsigmoid(labels * logits).sum() / image_features.shape[0]

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict: bool = False):
        """Loss of the local images against all ranks' texts, normalised by the local batch.

        Returns:
            The scalar loss, or `{"contrastive_loss": loss}` with `output_dict`.
        """
        _check_pair(image_features, text_features)
        _check_scalar(logit_scale, "logit_scale")
        _check_scalar(logit_bias, "logit_bias")
        loss = self._loss(image_features, text_features, logit_scale, logit_bias)
        if self.world_size > 1:
            loss = loss + self._remote_negatives(image_features, text_features, logit_scale, logit_bias)
        return {"contrastive_loss": loss} if output_dict else loss

    def _remote_negatives(self, image_features, text_features, logit_scale, logit_bias):
        """Sum of negative-only losses against every other rank's texts, per `dist_impl`."""

        def negatives(texts):
            return self._loss(image_features, texts, logit_scale, logit_bias, negative_only=True)

        rank, world_size = self.rank, self.world_size
        right, left = (rank + 1) % world_size, (rank - 1 + world_size) % world_size
        total = 0.0
        if self.dist_impl == "bidir":
            to_left = to_right = text_features
            num_bidir, remainder = divmod(world_size - 1, 2)
            for _ in range(num_bidir):  # round k brings ranks rank+k and rank-k
                from_right, from_left = neighbour_exchange_bidir_with_grad(left, right, to_left, to_right)
                total = total + negatives(from_right) + negatives(from_left)
                to_left, to_right = from_right, from_left
            if remainder:  # even world size: the opposite rank, one way
                total = total + negatives(neighbour_exchange_with_grad(left, right, to_right))
        elif self.dist_impl == "shift":
            to_right = text_features
            for _ in range(world_size - 1):
                from_left = neighbour_exchange_with_grad(left, right, to_right)
                total = total + negatives(from_left)
                to_right = from_left
        else:
            blocks = self._collect_texts(text_features)
            for i, texts in enumerate(blocks):
                # The own block is computed and zeroed (not skipped) so every rank runs the same
                # collectives in backward.
                total = total + float(i != rank) * negatives(texts)
        return total

    def _collect_texts(self, text_features):
        import torch.distributed.nn as dist_nn

        if self.dist_impl == "gather":
            return dist_nn.all_gather(text_features)
        return [
            dist_nn.all_reduce(text_features * (self.rank == i), op=dist.ReduceOp.SUM) for i in range(self.world_size)
        ]


def build_loss(
    *,
    model_name: str = "",
    distill: bool = False,
    siglip: bool = False,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    rank: int = 0,
    world_size: int = 1,
    use_horovod: bool = False,
    coca_caption_loss_weight: float = 2.0,
    coca_contrastive_loss_weight: float = 1.0,
    dist_impl: str | None = None,
    chunk_size: int | None = None,
) -> nn.Module:
    """Pick the training loss, first match wins: distillation, CoCa (by name), SigLIP, CLIP."""
    common = dict(
        local_loss=local_loss,
        gather_with_grad=gather_with_grad,
        cache_labels=True,
        rank=rank,
        world_size=world_size,
        use_horovod=use_horovod,
    )
    if distill:
        if chunk_size:
            raise ValueError(f"distillation needs full logits; chunk_size must be None, got {chunk_size}")
        return DistillClipLoss(**common)
    if "coca" in model_name.lower():
        return CoCaLoss(
            caption_loss_weight=coca_caption_loss_weight,
            clip_loss_weight=coca_contrastive_loss_weight,
            chunk_size=chunk_size,
            **common,
        )
    if siglip:
        if use_horovod:
            raise ValueError("Horovod not currently supported for SigLip (use_horovod=True given)")
        return SigLipLoss(rank=rank, world_size=world_size, dist_impl=dist_impl, chunk_size=chunk_size)
    return ClipLoss(chunk_size=chunk_size, **common)


def create_loss(args) -> nn.Module:
    """3.3's `create_loss(args)`: reads the training namespace and calls `build_loss`."""
    return build_loss(
        model_name=args.model,
        distill=getattr(args, "distill", False),
        siglip=getattr(args, "siglip", False),
        local_loss=getattr(args, "local_loss", False),
        gather_with_grad=getattr(args, "gather_with_grad", False),
        rank=getattr(args, "rank", 0),
        world_size=getattr(args, "world_size", 1),
        use_horovod=getattr(args, "horovod", False),
        coca_caption_loss_weight=getattr(args, "coca_caption_loss_weight", 2.0),
        coca_contrastive_loss_weight=getattr(args, "coca_contrastive_loss_weight", 1.0),
        dist_impl=getattr(args, "loss_dist_impl", None),
        chunk_size=getattr(args, "loss_chunk_size", None),
    )
