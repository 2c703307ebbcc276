"""A model pickled by OpenCLIP 3.3 (``torch.save(model)``) unpickles into our classes and works.

A 3.3 pickle names its classes by 3.3's module paths (``open_clip.model.CLIP``,
``open_clip.transformer.VisionTransformer``...) and carries only the instance attributes 3.3's
constructors set. We simulate one: build a model, delete from each module's ``__dict__`` the plain
attributes (and non-persistent buffers) 3.3 does not have, pickle it under 3.3's class paths, unpickle
and run it. Every attribute our classes add beyond 3.3's therefore needs a class-level default.
"""

import contextlib
import io

import pytest
import torch
from torch import nn

import open_clip
from open_clip.models.clip import CLIP, CustomTextCLIP

_MODULE_INTERNALS = set(nn.Module().__dict__)
_LAYER_NORM = set(vars(nn.LayerNorm(4))) - _MODULE_INTERNALS  # torch's own attributes

# Where each class lived in 3.3 (what its pickles name) and the plain instance attributes its
# constructor set (parameters, buffers and submodules are separate; None-valued slots count here).
_TRANSFORMER = "open_clip.transformer"
THREE_THREE = {
    "CLIP": ("open_clip.model", {"output_dict", "context_length", "vocab_size", "text_pool_type", "text_eos_id",
                                 "logit_bias"}),
    "CustomTextCLIP": ("open_clip.model", {"output_dict", "context_length", "vocab_size", "logit_bias"}),
    "CoCa": ("open_clip.coca_model", {"pad_id", "context_length", "logit_bias"}),
    "VisionTransformer": (_TRANSFORMER, {"output_tokens", "image_size", "patch_size", "grid_size",
                                         "final_ln_after_pool", "output_dim", "pool_type", "attn_pool", "proj"}),
    "TextTransformer": (_TRANSFORMER, {"output_tokens", "context_length", "num_pos", "vocab_size", "width",
                                       "output_dim", "heads", "pad_id", "eos_id", "pool_type", "use_pad_mask",
                                       "correct_cls_mask", "cls_emb", "text_projection", "attn_mask"}),
    "Transformer": (_TRANSFORMER, {"width", "layers", "batch_first", "grad_checkpointing"}),
    "MultimodalTransformer": (_TRANSFORMER, {"width", "layers", "batch_first", "grad_checkpointing",
                                             "context_length"}),
    "ResidualAttentionBlock": (_TRANSFORMER, set()),
    "CustomResidualAttentionBlock": (_TRANSFORMER, set()),
    "Attention": (_TRANSFORMER, {"scaled_cosine", "scale_heads", "num_heads", "head_dim", "scale",
                                 "logit_scale_max", "logit_scale", "head_scale", "in_proj_bias"}),
    "AttentionalPooler": (_TRANSFORMER, set()),
    "LayerNorm": (_TRANSFORMER, _LAYER_NORM),
    "LayerNormFp32": (_TRANSFORMER, _LAYER_NORM),
    "LayerScale": (_TRANSFORMER, {"inplace"}),
    "PatchDropout": (_TRANSFORMER, {"prob", "exclude_first_token"}),
    "QuickGELU": (_TRANSFORMER, set()),
    "ModifiedResNet": ("open_clip.modified_resnet", {"output_dim", "image_size", "_inplanes"}),
    "Bottleneck": ("open_clip.modified_resnet", {"stride", "downsample"}),
    "AttentionPool2d": ("open_clip.modified_resnet", {"num_heads"}),
    "TimmModel": ("open_clip.timm_model", {"image_size"}),
}
# Set by 3.3's ViT only with an attentional pooler.
_VIT_ATTN_POOL = {"attn_pool_type", "attn_pool_contrastive"}
_NON_PERSISTENT_3P3 = {"attn_mask"}

V = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16}
T = {"context_length": 12, "vocab_size": 100, "width": 32, "heads": 2, "layers": 2}


def _build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "clip_vit":
        return CLIP(16, V, T)
    if kind == "clip_resnet":
        return CLIP(16, {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16}, T, quick_gelu=True)
    if kind == "custom_text":  # custom blocks, LayerScale, attentional pool, bidirectional text, patch dropout
        vision = dict(V, ls_init_value=1e-5, attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2,
                      patch_dropout=0.5, final_ln_after_pool=True)
        text = dict(T, qk_norm=True, no_causal_mask=True, pool_type="last", proj_bias=True)
        return CustomTextCLIP(16, vision, text, init_logit_bias=-10.0)
    if kind == "coca":
        text = dict(T, context_length=8, embed_cls=True, output_tokens=True)
        vision = dict(V, attentional_pool=True, attn_pooler_queries=5, attn_pooler_heads=2, output_tokens=True)
        return open_clip.CoCa(32, {"width": 32, "layers": 1, "heads": 2, "context_length": 8}, text, vision)
    if kind == "timm":
        pytest.importorskip("timm")
        return CustomTextCLIP(16, {"timm_model_name": "test_vit", "image_size": 160, "timm_proj": "linear"}, T)
    raise ValueError(kind)


def _ours(module: nn.Module) -> bool:
    return type(module).__module__.startswith("open_clip")


def strip_to_3p3(model: nn.Module) -> list[tuple[str, str, object]]:
    """Delete what 3.3's instances lack; return (class, attribute, value) for each deletion."""
    removed = []
    for module in model.modules():
        if not _ours(module):
            continue
        cls = type(module).__name__
        assert cls in THREE_THREE, f"{cls} is not a 3.3 class: a 3.3 pickle cannot contain it"
        allowed = set(THREE_THREE[cls][1])
        if cls == "VisionTransformer" and module.attn_pool is not None:
            allowed |= _VIT_ATTN_POOL
        for name in [n for n in vars(module) if n not in _MODULE_INTERNALS and n not in allowed]:
            removed.append((cls, name, vars(module)[name]))
            del module.__dict__[name]
        for name in [n for n in module._non_persistent_buffers_set if n not in _NON_PERSISTENT_3P3]:
            removed.append((cls, name, "non-persistent buffer"))
            module._non_persistent_buffers_set.discard(name)
            module._buffers.pop(name, None)
    return removed


@contextlib.contextmanager
def _named_as_in_3p3(model: nn.Module):
    """Make pickle record each class under its 3.3 module path (as a 3.3 pickle does)."""
    classes = {type(m) for m in model.modules() if _ours(m)}
    saved = {cls: cls.__module__ for cls in classes}
    try:
        for cls in classes:
            cls.__module__ = THREE_THREE[cls.__name__][0]
        yield
    finally:
        for cls, module_name in saved.items():
            cls.__module__ = module_name


def _outputs(model: nn.Module, kind: str) -> dict:
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    torch.manual_seed(1)
    images = torch.randn(2, 3, size, size)
    text = torch.randint(1, 99, (2, model.context_length))
    text[:, -3:] = 0  # padding
    text[0, 4] = 99  # an end token mid-sequence: the highest id, where argmax pooling reads
    with torch.no_grad():
        out = {"image": model.encode_image(images), "text": model.encode_text(text)}
        if kind == "coca":
            out["generated"] = model.generate(images, seq_len=5, generation_type="top_k", top_k=1, min_seq_len=1,
                                              sot_token_id=1, eos_token_id=99, pad_token_id=0)
        else:
            out["logits_scale"] = model(images, text)[2]
    return out


@pytest.mark.parametrize("kind", ["clip_vit", "clip_resnet", "custom_text", "coca", "timm"])
def test_model_pickled_by_3p3_works(kind):
    model = _build(kind).eval()
    expected = _outputs(model, kind)
    strip_to_3p3(model)
    buffer = io.BytesIO()
    with _named_as_in_3p3(model):
        torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert type(restored) is type(model)
    got = _outputs(restored.eval(), kind)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
