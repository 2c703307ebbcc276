"""The modified ResNet image tower of OpenAI's CLIP (``ModifiedResNet``): 3-conv stem, anti-aliased
(avg-pool) strided bottlenecks and a QKV attention pool (``AttentionPool2d``)."""

from collections import OrderedDict
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import feature_take_indices, freeze_batch_norm_2d
from .materialize import draw, reset_tree
from .observers import capturing_graph
from .row_stable import linear_rows

__all__ = ["Bottleneck", "AttentionPool2d", "ModifiedResNet"]


class Bottleneck(nn.Module):
    """1x1 → 3x3 → (avg-pool when strided) → 1x1 bottleneck; all convs stride 1, no bias."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        self.stride = stride
        if stride > 1 or inplanes != planes * self.expansion:
            # key names "-1" / "0" / "1" follow the OpenAI checkpoint layout
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.avgpool(out)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.act3(out)


def _heads_view(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, B, C) -> (B, H, N, C // H) with the strides ``F.multi_head_attention_forward`` uses."""
    length, batch, channels = x.shape
    head_dim = channels // heads
    return x.view(length, batch * heads, head_dim).transpose(0, 1).view(batch, heads, length, head_dim)


class AttentionPool2d(nn.Module):
    """Multi-head attention of the spatial-mean token over all (mean + spatial) tokens."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: Optional[int] = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def init_weights(self) -> None:
        """Draw the parameters again as the constructor does (see ``materialize``)."""
        width = self.positional_embedding.shape[1]
        draw(self.positional_embedding, lambda t: t.copy_(torch.randn(t.shape) / width**0.5))
        for child in (self.k_proj, self.q_proj, self.v_proj, self.c_proj):
            reset_tree(child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if not capturing_graph():
                return self._forward_mean_query(x)
        return self._forward_all_queries(x)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[0], x.shape[1]
        x = x.reshape(batch, channels, -1).permute(2, 0, 1)  # (HW, B, C): 3.3's sequence-first layout
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (N, B, C), N = HW + 1
        return x + self.positional_embedding[:, None, :].to(x.dtype)

    def _forward_all_queries(self, x: torch.Tensor) -> torch.Tensor:
        """3.3's computation (every token queries; row 0 kept): what scripts and graphs capture."""
        x = self._tokens(x)
        out, _ = F.multi_head_attention_forward(
            query=x,
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False,
        )
        return out[0]

    @torch.jit.unused
    def _forward_mean_query(self, x: torch.Tensor) -> torch.Tensor:
        """The same bits, projecting only the mean token's query and output rows (the only ones
        read); attention keeps the full query grid (zeros elsewhere) so that its kernels round as
        in the full computation."""
        batch, channels = x.shape[0], x.shape[1]
        heads = self.num_heads
        x = self._tokens(x)
        length = x.shape[0]
        reference = length * batch  # rows of the full computation's projections
        q = linear_rows(x[0], self.q_proj.weight, self.q_proj.bias, reference)  # (B, C)
        k = F.linear(x, self.k_proj.weight, self.k_proj.bias)
        v = F.linear(x, self.v_proj.weight, self.v_proj.bias)
        queries = torch.cat([q.unsqueeze(0), q.new_zeros(length - 1, batch, channels)])
        out = F.scaled_dot_product_attention(
            _heads_view(queries, heads), _heads_view(k, heads), _heads_view(v, heads)
        )
        out = out[:, :, 0].reshape(batch, channels)  # the mean token, heads concatenated
        return linear_rows(out, self.c_proj.weight, self.c_proj.bias, reference)  # (B, output_dim)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image tower; returns [B, output_dim] embeddings."""

    def __init__(self, layers: list[int], output_dim: int, heads: int, image_size: int = 224, width: int = 64):
        super().__init__()
        self.output_dim = output_dim
        self.image_size = image_size

        # 3-layer stem (creation order = 3.3's RNG consumption order)
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)

        embed_dim = width * 32
        self.attnpool = AttentionPool2d(image_size // 32, embed_dim, heads, output_dim)
        self.init_parameters()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        for _ in range(1, blocks):
            layers.append(Bottleneck(self._inplanes, planes))
        return nn.Sequential(*layers)

    def init_parameters(self) -> None:
        """Normal init of the attention-pool projections, zero init of every ``bn3.weight``."""
        if self.attnpool is not None:
            std = self.attnpool.c_proj.in_features**-0.5
            for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
                draw(proj.weight, lambda t: nn.init.normal_(t, std=std))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for name, param in stage.named_parameters():
                if name.endswith("bn3.weight"):
                    draw(param, nn.init.zeros_)

    def init_weights(self) -> None:
        """Draw the parameters again as the constructor does (see ``materialize``)."""
        for child in self.children():
            reset_tree(child)
        self.init_parameters()

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze all parameters (partial locking unsupported); optionally freeze BN statistics."""
        assert unlocked_groups == 0, "partial locking not currently supported for this model"
        for param in self.parameters():
            param.requires_grad = False
        if freeze_bn_stats:
            freeze_batch_norm_2d(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # not supported for this tower (as in 3.3)
        pass

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.attnpool(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        stop_early: bool = False,
        normalize_intermediates: bool = False,
        intermediates_only: bool = False,
        output_fmt: str = "NCHW",
        output_extra_tokens: bool = False,
    ) -> dict[str, Union[torch.Tensor, list[torch.Tensor]]]:
        """Feature maps of the selected stages [stem, layer1..layer4] (``image_intermediates``)
        plus ``image_features`` unless ``intermediates_only``."""
        assert output_fmt in ("NCHW",), "Output format must be == NCHW."
        take_indices, max_index = feature_take_indices(5, indices)
        stages = [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]
        if stop_early:
            # 3.3 truncated when stop_early was False (inverted); truncate only on request
            stages = stages[: max_index + 1]
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        output: dict[str, Union[torch.Tensor, list[torch.Tensor]]] = {"image_intermediates": intermediates}
        if intermediates_only:
            return output
        output["image_features"] = self.attnpool(x)
        return output
