"""Compatibility shim: 3.3's ``open_clip.modified_resnet`` names, implemented in
``open_clip.models.modified_resnet``."""

from .models.modified_resnet import AttentionPool2d, Bottleneck, ModifiedResNet  # noqa: F401
from .utils import feature_take_indices, freeze_batch_norm_2d  # noqa: F401
