"""Collective helpers used by the contrastive losses.

Owns: `gather_features` (all-gather of image/text features, with or without autograd), the
point-to-point `neighbour_exchange*` helpers and their autograd wrappers used by SigLIP's
`bidir`/`shift` schedules. Nothing here sets up a process group: callers pass `rank` and
`world_size` and the default group must already exist.
"""

from __future__ import annotations

import torch

try:
    import torch.distributed as dist
    import torch.distributed.nn as dist_nn

    _HAS_DIST = dist.is_available()
except ImportError:  # pragma: no cover - minimal torch builds
    dist = None
    dist_nn = None
    _HAS_DIST = False

__all__ = [
    "gather_features",
    "neighbour_exchange",
    "neighbour_exchange_bidir",
    "neighbour_exchange_with_grad",
    "neighbour_exchange_bidir_with_grad",
    "NeighbourExchange",
    "NeighbourExchangeBidir",
    "require_horovod",
]


def require_horovod():
    """Import and return `horovod.torch`, or raise an ImportError that says how to get it."""
    try:
        import horovod.torch as hvd
    except ImportError as e:
        raise ImportError(
            "use_horovod=True needs the `horovod` package (horovod.torch), which is not installed; "
            "install horovod or use torch.distributed (use_horovod=False)."
        ) from e
    return hvd


def _check_dist() -> None:
    if not _HAS_DIST:
        raise RuntimeError("torch.distributed did not import correctly, please use a PyTorch version with support.")


def _gather_no_grad(tensor: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    parts = [torch.zeros_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def gather_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    rank: int = 0,
    world_size: int = 1,
    use_horovod: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather image and text features from every rank, rows ordered by rank.

    With `gather_with_grad` the gather is autograd-aware (each rank's features receive the
    gradient of every rank's loss). Without it the gather is a plain copy; for the global loss
    (`local_loss=False`) the local slot is replaced by the local tensor so that at least the
    local features receive gradient.

    Returns:
        (all_image_features, all_text_features), each (world_size * B, D).
    """
    if use_horovod:
        return _gather_horovod(image_features, text_features, local_loss, gather_with_grad, rank)
    _check_dist()
    if gather_with_grad:
        all_image = torch.cat(dist_nn.all_gather(image_features), dim=0)
        all_text = torch.cat(dist_nn.all_gather(text_features), dim=0)
        return all_image, all_text
    image_parts = _gather_no_grad(image_features, world_size)
    text_parts = _gather_no_grad(text_features, world_size)
    if not local_loss:
        # Splice the local tensors back in so their gradients flow (the gathered copies have none).
        image_parts[rank] = image_features
        text_parts[rank] = text_features
    return torch.cat(image_parts, dim=0), torch.cat(text_parts, dim=0)


def _gather_horovod(image_features, text_features, local_loss, gather_with_grad, rank):
    hvd = require_horovod()
    if gather_with_grad:
        return hvd.allgather(image_features), hvd.allgather(text_features)
    with torch.no_grad():
        all_image = hvd.allgather(image_features)
        all_text = hvd.allgather(text_features)
    if not local_loss:
        image_parts = list(all_image.chunk(hvd.size(), dim=0))
        text_parts = list(all_text.chunk(hvd.size(), dim=0))
        image_parts[rank] = image_features
        text_parts[rank] = text_features
        all_image, all_text = torch.cat(image_parts, dim=0), torch.cat(text_parts, dim=0)
    return all_image, all_text


def neighbour_exchange(from_rank: int, to_rank: int, tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Send `tensor` to `to_rank` and return the same-shaped tensor received from `from_rank`."""
    received = torch.zeros_like(tensor)
    ops = [
        dist.P2POp(dist.isend, tensor.contiguous(), to_rank, group=group),
        dist.P2POp(dist.irecv, received, from_rank, group=group),
    ]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return received


def neighbour_exchange_bidir(
    left_rank: int,
    right_rank: int,
    tensor_to_left: torch.Tensor,
    tensor_to_right: torch.Tensor,
    group=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Send one tensor to each neighbour and receive one from each.

    Returns:
        (tensor_from_right, tensor_from_left).
    """
    from_right = torch.zeros_like(tensor_to_right)
    from_left = torch.zeros_like(tensor_to_left)
    # Op order matters for matching on every backend: sends first, then receives, right before left.
    ops = [
        dist.P2POp(dist.isend, tensor_to_right.contiguous(), right_rank, group=group),
        dist.P2POp(dist.isend, tensor_to_left.contiguous(), left_rank, group=group),
        dist.P2POp(dist.irecv, from_right, right_rank, group=group),
        dist.P2POp(dist.irecv, from_left, left_rank, group=group),
    ]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return from_right, from_left


class NeighbourExchange(torch.autograd.Function):
    """`neighbour_exchange` whose backward sends the gradient back along the reverse edge."""

    @staticmethod
    def forward(ctx, from_rank, to_rank, group, tensor):
        ctx.from_rank, ctx.to_rank, ctx.group = from_rank, to_rank, group
        return neighbour_exchange(from_rank, to_rank, tensor, group=group)

    @staticmethod
    def backward(ctx, grad_output):
        # We received from `from_rank`, so its gradient goes back there; ours comes from `to_rank`.
        grad = neighbour_exchange(ctx.to_rank, ctx.from_rank, grad_output.contiguous(), group=ctx.group)
        return None, None, None, grad


def neighbour_exchange_with_grad(from_rank: int, to_rank: int, tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Autograd-aware `neighbour_exchange`."""
    return NeighbourExchange.apply(from_rank, to_rank, group, tensor)


class NeighbourExchangeBidir(torch.autograd.Function):
    """`neighbour_exchange_bidir` whose backward mirrors the exchange (left and right swapped)."""

    @staticmethod
    def forward(ctx, left_rank, right_rank, group, tensor_to_left, tensor_to_right):
        ctx.left_rank, ctx.right_rank, ctx.group = left_rank, right_rank, group
        return neighbour_exchange_bidir(left_rank, right_rank, tensor_to_left, tensor_to_right, group=group)

    @staticmethod
    def backward(ctx, grad_from_right, grad_from_left):
        # Each received block's gradient returns to its sender: grad_from_right goes right,
        # grad_from_left goes left. What arrives from the left neighbour is the gradient of what
        # we sent left, and vice versa.
        grad_to_left, grad_to_right = neighbour_exchange_bidir(
            ctx.right_rank,
            ctx.left_rank,
            grad_from_right.contiguous(),
            grad_from_left.contiguous(),
            group=ctx.group,
        )
        return None, None, None, grad_to_left, grad_to_right


def neighbour_exchange_bidir_with_grad(
    left_rank: int,
    right_rank: int,
    tensor_to_left: torch.Tensor,
    tensor_to_right: torch.Tensor,
    group=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd-aware `neighbour_exchange_bidir`; returns (tensor_from_right, tensor_from_left)."""
    return NeighbourExchangeBidir.apply(left_rank, right_rank, group, tensor_to_left, tensor_to_right)
