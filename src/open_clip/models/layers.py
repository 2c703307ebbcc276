"""Basic layers of the native towers: LayerNorm variants (dtype rules), QuickGELU, LayerScale and
PatchDropout."""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerNorm", "LayerNormFp32", "QuickGELU", "LayerScale", "PatchDropout"]


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in float32 (input upcast), result cast back to the input dtype.

    Used for every tower norm when the model is built for fp16 / bf16 (``cast_dtype``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_type = x.dtype
        x = F.layer_norm(x.to(torch.float32), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.to(orig_type)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in the input dtype, result cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_type = x.dtype
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.to(orig_type)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU used by OpenAI's CLIP: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """Per-channel learnable scale ``gamma`` (initialised to ``init_values``)."""

    init_values = 1e-5  # class default: modules pickled by 3.3 lack the instance attribute

    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False):
        super().__init__()
        self.inplace = inplace
        self.init_values = init_values
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


class PatchDropout(nn.Module):
    """Randomly keep ``max(1, int(N * (1 - prob)))`` of the N patch tokens while training.

    The CLS token (index 0) is always kept when ``exclude_first_token``. Kept tokens come out
    in descending-noise order (a random permutation), as in 3.3; the noise is drawn from the
    global CPU generator so seeded runs reproduce 3.3's selection.
    """

    def __init__(self, prob: float = 0.5, exclude_first_token: bool = True):
        super().__init__()
        assert 0 <= prob < 1.0
        self.prob = prob
        self.exclude_first_token = exclude_first_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x

        if self.exclude_first_token:
            cls_tokens, x = x[:, :1], x[:, 1:]
        else:
            cls_tokens = torch.jit.annotate(torch.Tensor, x[:, :1])

        batch, num_tokens = x.shape[0], x.shape[1]
        batch_idx = torch.arange(batch)[..., None]
        num_keep = max(1, int(num_tokens * (1 - self.prob)))
        # noise from the default (CPU) generator, no device argument: matches 3.3's RNG use
        rand = torch.randn(batch, num_tokens)
        keep_idx = rand.topk(num_keep, dim=-1).indices
        x = x[batch_idx.to(x.device), keep_idx.to(x.device)]  # (B, keep, C)

        if self.exclude_first_token:
            x = torch.cat((cls_tokens, x), dim=1)
        return x
