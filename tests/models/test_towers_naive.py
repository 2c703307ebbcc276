"""Tower options the golden fixtures don't cover, checked against the naive float64 reference in
``towers_naive.py`` (sin-cos positions, custom-block features, eos / none pooling, act / norm
kwargs, patch dropout, LayerNormFp32 low-precision casting)."""

import math
from functools import partial

import pytest
import torch
from torch import nn
from towers_naive import params64
from towers_naive import text as naive_text
from towers_naive import vit as naive_vit

from open_clip.models.layers import LayerNorm, LayerNormFp32, QuickGELU
from open_clip.models.text_transformer import TextTransformer
from open_clip.models.vision_transformer import VisionTransformer

ATOL = 1e-5


def perturb(module: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Move every parameter (norm weights, scales, gammas too) off its init so options matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return module


def naive_opts(kwargs: dict) -> dict:
    names = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn", "scale_attn_inner", "scale_fc")
    return {k: kwargs.get(k, False) for k in names}


VIT_CASES = {
    "sin_cos": dict(pos_embed_type="sin_cos_2d"),
    "qk_norm": dict(qk_norm=True),
    "scaled_cosine": dict(scaled_cosine_attn=True),
    "scale_heads": dict(scale_heads=True),
    "scale_attn": dict(scale_attn=True),
    "scale_attn_inner": dict(scale_attn_inner=True),
    "scale_fc": dict(scale_fc=True),
    "all_custom_ls": dict(
        qk_norm=True, scale_heads=True, scale_attn=True, scale_attn_inner=True, scale_fc=True, ls_init_value=0.5
    ),
    "act_norm_kwargs": dict(act_layer=partial(nn.GELU, approximate="tanh"), norm_layer=partial(LayerNorm, eps=1e-6)),
    "quickgelu_pool_none": dict(act_layer=QuickGELU, pool_type="none"),
    "avg_ln_after_no_ln_pre": dict(pool_type="avg", final_ln_after_pool=True, no_ln_pre=True),
    "rect_patch": dict(image_size=(16, 24), patch_size=(4, 8)),
}


def build_vit(kwargs: dict) -> tuple:
    kwargs = dict(kwargs)
    image_size = kwargs.pop("image_size", 16)
    patch_size = kwargs.pop("patch_size", 4)
    torch.manual_seed(0)
    model = VisionTransformer(image_size, patch_size, 32, 2, 4, 2.0, output_dim=8, **kwargs)
    perturb(model)
    act = kwargs.get("act_layer")
    cfg = dict(
        patch=model.patch_size if isinstance(model.patch_size, tuple) else (patch_size, patch_size),
        heads=4,
        layers=2,
        eps=1e-6 if "norm_layer" in kwargs else 1e-5,
        act="gelu_tanh" if isinstance(act, partial) else ("quick_gelu" if act is QuickGELU else "gelu"),
        pool=kwargs.get("pool_type", "tok"),
        no_ln_pre=kwargs.get("no_ln_pre", False),
        final_ln_after_pool=kwargs.get("final_ln_after_pool", False),
        opt=naive_opts(kwargs),
    )
    ih, iw = (image_size, image_size) if isinstance(image_size, int) else image_size
    images = torch.randn(2, 3, ih, iw, generator=torch.Generator().manual_seed(1))
    return model, cfg, images


# train mode matters only where attention / dropout code branches on self.training
VIT_TRAIN = ("scaled_cosine", "all_custom_ls", "qk_norm")
TEXT_TRAIN = ("argmax_custom", "cosine_custom", "embed_cls_pad", "eos")


def _modes(cases, train_cases):
    return [(c, "eval") for c in cases] + [(c, "train") for c in train_cases]


@pytest.mark.parametrize("case,mode", _modes(VIT_CASES, VIT_TRAIN))
def test_vit_matches_naive(case, mode):
    model, cfg, images = build_vit(VIT_CASES[case])
    model.train(mode == "train")
    with torch.no_grad():
        out = model(images)
    ref, _ = naive_vit(images, params64(model), cfg)
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, atol=ATOL, rtol=0)


def test_vit_output_tokens_match_naive():
    model, cfg, images = build_vit({"ls_init_value": 0.3})
    model.output_tokens = True
    model.eval()
    with torch.no_grad():
        pooled, tokens = model(images)
    ref_pooled, ref_tokens = naive_vit(images, params64(model), cfg)
    torch.testing.assert_close(pooled.double(), ref_pooled, atol=ATOL, rtol=0)
    torch.testing.assert_close(tokens.double(), ref_tokens, atol=ATOL, rtol=0)


def test_sincos_table_layout():
    model = VisionTransformer(16, 4, 32, 1, 4, 2.0, output_dim=8, pos_embed_type="sin_cos_2d")
    table = model.positional_embedding
    assert not table.requires_grad and "positional_embedding" in model.state_dict()
    width, grid, half = 32, 4, 16
    assert torch.all(table[0] == 0)
    for r in range(grid):
        for c in range(grid):
            row = table[1 + r * grid + c].double()
            for which, pos in ((0, c), (1, r)):  # first half: column, second half: row
                for i in range(half // 2):
                    omega = 1.0 / 10000 ** (i / (half / 2))
                    assert abs(row[which * half + i] - math.sin(pos * omega)) < 1e-6
                    assert abs(row[which * half + half // 2 + i] - math.cos(pos * omega)) < 1e-6
    assert table.shape == (grid * grid + 1, width)


def test_sincos_requires_square_grid():
    with pytest.raises(AssertionError, match="square"):
        VisionTransformer((16, 24), 4, 32, 1, 4, 2.0, output_dim=8, pos_embed_type="sin_cos_2d")
    with pytest.raises(ValueError):
        VisionTransformer(16, 4, 32, 1, 4, 2.0, output_dim=8, pos_embed_type="rope")


@pytest.mark.parametrize("prob", [0.5, 0.25, 0.95])
def test_patch_dropout_matches_naive(prob):
    model, cfg, images = build_vit({"patch_dropout": prob})
    model.train()
    num_patches = 16
    torch.manual_seed(123)
    with torch.no_grad():
        out = model(images)
    torch.manual_seed(123)
    noise = torch.randn(images.shape[0], num_patches)
    keep = torch.argsort(noise, dim=-1, descending=True)[:, : max(1, int(num_patches * (1 - prob)))]
    ref, _ = naive_vit(images, params64(model), cfg, keep=keep)
    torch.testing.assert_close(out.double(), ref, atol=ATOL, rtol=0)
    # eval: identity
    model.eval()
    with torch.no_grad():
        out_eval = model(images)
    ref_eval, _ = naive_vit(images, params64(model), cfg)
    torch.testing.assert_close(out_eval.double(), ref_eval, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# text tower

VOCAB, CTX, EOT = 50, 12, 49

TEXT_CASES = {
    "eos": dict(pool_type="eos", eos_id=7),
    "none": dict(pool_type="none"),
    "first": dict(pool_type="first"),
    "argmax_custom": dict(qk_norm=True, scale_fc=True, scale_heads=True),
    "cosine_custom": dict(scaled_cosine_attn=True, scale_attn=True, scale_attn_inner=True),
    "act_norm_kwargs_ls": dict(
        act_layer=partial(nn.GELU, approximate="tanh"), norm_layer=partial(LayerNorm, eps=1e-6), ls_init_value=0.5
    ),
    "last_bidir_linear": dict(no_causal_mask=True, pool_type="last", proj_bias=True),
    "embed_cls_pad": dict(embed_cls=True),
    "no_projection": dict(output_dim=None),
    "eos_custom_linear": dict(pool_type="eos", eos_id=EOT, qk_norm=True, proj_bias=True),
}


def make_tokens(batch: int = 4, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    text = torch.zeros(batch, CTX, dtype=torch.long)
    for b in range(batch):
        n = int(torch.randint(1, CTX - 1, (1,), generator=gen))
        text[b, :n] = torch.randint(1, EOT, (n,), generator=gen)
        text[b, n] = EOT
        if b % 2 == 0:
            text[b, int(torch.randint(0, n + 1, (1,), generator=gen))] = 7  # an 'eos' id for pool eos
    return text


def build_text(kwargs: dict) -> tuple:
    kwargs = dict(kwargs)
    output_dim = kwargs.pop("output_dim", 8)
    torch.manual_seed(0)
    model = TextTransformer(CTX, VOCAB, 32, 4, 2, mlp_ratio=2.0, output_dim=output_dim, **kwargs)
    perturb(model)
    act = kwargs.get("act_layer")
    cfg = dict(
        heads=4,
        layers=2,
        eps=1e-6 if "norm_layer" in kwargs else 1e-5,
        act="gelu_tanh" if isinstance(act, partial) else "gelu",
        pool=kwargs.get("pool_type", "argmax"),
        eos_id=kwargs.get("eos_id", 2),
        causal=not kwargs.get("no_causal_mask", False),
        opt=naive_opts(kwargs),
    )
    return model, cfg


@pytest.mark.parametrize("case,mode", _modes(TEXT_CASES, TEXT_TRAIN))
def test_text_matches_naive(case, mode):
    model, cfg = build_text(TEXT_CASES[case])
    model.train(mode == "train")
    tokens = make_tokens()
    with torch.no_grad():
        out = model(tokens)
    ref, _ = naive_text(tokens, params64(model), cfg)
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, atol=ATOL, rtol=0)


def test_text_output_tokens_match_naive():
    model, cfg = build_text({"embed_cls": True, "output_tokens": True})
    model.eval()
    tokens = make_tokens()
    with torch.no_grad():
        pooled, toks = model(tokens)
    ref, ref_toks = naive_text(tokens, params64(model), cfg)
    torch.testing.assert_close(pooled.double(), ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(toks.double(), ref_toks, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# low precision: LayerNormFp32 towers with bf16 / fp16 weights


def to_low_precision(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast what 3.3's convert_weights_to_lp casts (conv / linear / attention projections, proj)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data = m.weight.data.to(dtype)
            if m.bias is not None:
                m.bias.data = m.bias.data.to(dtype)
        for name in ("in_proj_weight", "in_proj_bias"):
            t = getattr(m, name, None)
            if isinstance(t, nn.Parameter):
                t.data = t.data.to(dtype)
        for name in ("proj", "text_projection"):
            t = getattr(m, name, None)
            if isinstance(t, nn.Parameter):
                t.data = t.data.to(dtype)
    return model


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("custom", [False, True])
def test_low_precision_vit(dtype, custom):
    extra = {"qk_norm": True, "scale_fc": True} if custom else {}
    model, _, images = build_vit(dict(norm_layer=LayerNormFp32, **extra))
    model.eval()
    with torch.no_grad():
        ref = model(images)
        to_low_precision(model, dtype)
        assert model.ln_pre.weight.dtype == torch.float32  # norms stay fp32
        out = model(images.to(dtype))
    assert out.dtype == dtype
    assert rel_err(out, ref) < 2e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["argmax", "embed_cls_pad", "eos_custom_linear"])
def test_low_precision_text(dtype, case):
    kwargs = TEXT_CASES.get(case, {})
    model, _ = build_text(dict(norm_layer=LayerNormFp32, **kwargs))
    model.eval()
    tokens = make_tokens()
    with torch.no_grad():
        ref = model(tokens)
        to_low_precision(model, dtype)
        assert model.transformer.get_cast_dtype() == dtype
        out = model(tokens)
    assert out.dtype == dtype
    assert rel_err(out, ref) < 2e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_norm_casting_rules(dtype):
    x = torch.randn(4, 16).to(dtype)
    weight, bias = torch.randn(16), torch.randn(16)
    ln32 = LayerNormFp32(16)
    ln = LayerNorm(16)
    for m in (ln32, ln):
        m.weight.data.copy_(weight)
        m.bias.data.copy_(bias)
    x64 = x.double()
    mean, var = x64.mean(-1, keepdim=True), x64.var(-1, unbiased=False, keepdim=True)
    expected = ((x64 - mean) / torch.sqrt(var + 1e-5) * weight.double() + bias.double()).to(dtype)
    out32 = ln32(x)
    assert out32.dtype == dtype
    # computed in float32 then rounded once: equal to the exact value rounded to dtype (or 1 ulp)
    torch.testing.assert_close(out32, expected, atol=0, rtol=2**-7 if dtype == torch.bfloat16 else 2**-10)
    out = ln(x)
    assert out.dtype == dtype
    assert rel_err(out, expected) < 2e-2
