"""Tower plumbing: seeded initialisation order, PatchDropout, lock / BN freezing, grad
checkpointing (incl. custom blocks), forward_intermediates, TorchScript, utils and the shims."""

import math

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from open_clip.models.attention import Transformer
from open_clip.models.layers import LayerScale, PatchDropout, QuickGELU
from open_clip.models.modified_resnet import ModifiedResNet
from open_clip.models.text_transformer import TextTransformer
from open_clip.models.vision_transformer import VisionTransformer
from open_clip.utils import (
    _out_indices_as_tuple,
    convert_int8_model_to_inference_mode,
    feature_take_indices,
    freeze_batch_norm_2d,
    replace_linear,
    to_2tuple,
    to_ntuple,
)

# ---------------------------------------------------------------------------------------------
# seeded init: replay spec 02 §12's documented creation order with plain torch layers


def _replay_block(width: int, heads: int, hidden: int) -> list:
    mha = nn.MultiheadAttention(width, heads, batch_first=True)
    c_fc, c_proj = nn.Linear(width, hidden), nn.Linear(hidden, width)
    return [mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias, c_fc, c_proj]


def test_vit_seeded_init_order():
    torch.manual_seed(0)
    model = VisionTransformer(16, 4, 16, 2, 2, 2.0, output_dim=8, attentional_pool=True, attn_pooler_queries=3)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 4, 4, bias=False)
    scale = 16**-0.5
    cls = scale * torch.randn(16)
    pos = scale * torch.randn(17, 16)
    blocks = [_replay_block(16, 2, 32) for _ in range(2)]
    query = torch.randn(3, 8)
    pool_mha = nn.MultiheadAttention(8, 8, kdim=16, vdim=16, batch_first=True)
    proj = scale * torch.randn(8, 8)
    sd = model.state_dict()
    assert torch.equal(sd["conv1.weight"], conv.weight)
    assert torch.equal(sd["class_embedding"], cls) and torch.equal(sd["positional_embedding"], pos)
    for i, (w_in, b_in, w_out, b_out, c_fc, c_proj) in enumerate(blocks):
        pre = f"transformer.resblocks.{i}."
        assert torch.equal(sd[pre + "attn.in_proj_weight"], w_in) and torch.equal(sd[pre + "attn.in_proj_bias"], b_in)
        assert torch.equal(sd[pre + "attn.out_proj.weight"], w_out)
        assert torch.equal(sd[pre + "attn.out_proj.bias"], b_out)
        assert torch.equal(sd[pre + "mlp.c_fc.weight"], c_fc.weight)
        assert torch.equal(sd[pre + "mlp.c_fc.bias"], c_fc.bias)
        assert torch.equal(sd[pre + "mlp.c_proj.weight"], c_proj.weight)
    assert torch.equal(sd["attn_pool.query"], query)
    assert torch.equal(sd["attn_pool.attn.q_proj_weight"], pool_mha.q_proj_weight)
    assert torch.equal(sd["attn_pool.attn.v_proj_weight"], pool_mha.v_proj_weight)
    assert torch.equal(sd["proj"], proj)


def test_custom_block_seeded_init_order():
    torch.manual_seed(0)
    model = Transformer(8, 1, 2, mlp_ratio=2.0, qk_norm=True)
    torch.manual_seed(0)
    in_w = torch.randn(24, 8) * 4**-0.5
    out_proj = nn.Linear(8, 8)
    c_fc, c_proj = nn.Linear(8, 16), nn.Linear(16, 8)
    sd = model.state_dict()
    assert torch.equal(sd["resblocks.0.attn.in_proj_weight"], in_w)
    assert torch.equal(sd["resblocks.0.attn.in_proj_bias"], torch.zeros(24))
    assert torch.equal(sd["resblocks.0.attn.out_proj.weight"], out_proj.weight)
    assert torch.equal(sd["resblocks.0.attn.out_proj.bias"], out_proj.bias)
    assert torch.equal(sd["resblocks.0.mlp.c_fc.weight"], c_fc.weight)
    assert torch.equal(sd["resblocks.0.mlp.c_proj.bias"], c_proj.bias)
    assert sd["resblocks.0.attn.ln_q.weight"].shape == (4,)


@pytest.mark.parametrize("proj_bias", [False, True])
def test_text_seeded_init_order(proj_bias):
    torch.manual_seed(0)
    model = TextTransformer(6, 20, 16, 2, 2, output_dim=8, embed_cls=True, proj_bias=proj_bias)
    torch.manual_seed(0)
    emb = nn.Embedding(20, 16)
    blocks = [_replay_block(16, 2, 64) for _ in range(2)]
    lin = nn.Linear(16, 8) if proj_bias else None
    # init_parameters(): normal draws in the documented order
    emb_w = torch.empty(20, 16).normal_(std=0.02)
    pos = torch.empty(7, 16).normal_(std=0.01)
    cls = torch.empty(16).normal_(std=0.01)
    proj_std, attn_std, fc_std = 16**-0.5 * (2 * 2) ** -0.5, 16**-0.5, (2 * 16) ** -0.5
    per_block = []
    for _ in blocks:
        per_block.append(
            [
                torch.empty(48, 16).normal_(std=attn_std),
                torch.empty(16, 16).normal_(std=proj_std),
                torch.empty(64, 16).normal_(std=fc_std),
                torch.empty(16, 64).normal_(std=proj_std),
            ]
        )
    projection = torch.empty(8, 16).normal_(std=16**-0.5) if proj_bias else torch.empty(16, 8).normal_(std=16**-0.5)
    sd = model.state_dict()
    assert emb.weight.shape == emb_w.shape
    assert torch.equal(sd["token_embedding.weight"], emb_w)
    assert torch.equal(sd["positional_embedding"], pos) and torch.equal(sd["cls_emb"], cls)
    for i, (w_in, w_out, w_fc, w_proj) in enumerate(per_block):
        pre = f"transformer.resblocks.{i}."
        assert torch.equal(sd[pre + "attn.in_proj_weight"], w_in)
        assert torch.equal(sd[pre + "attn.out_proj.weight"], w_out)
        assert torch.equal(sd[pre + "mlp.c_fc.weight"], w_fc)
        assert torch.equal(sd[pre + "mlp.c_proj.weight"], w_proj)
        assert torch.equal(sd[pre + "mlp.c_fc.bias"], blocks[i][4].bias)  # biases keep construction values
        assert torch.equal(sd[pre + "attn.out_proj.bias"], torch.zeros(16))
    if proj_bias:
        assert torch.equal(sd["text_projection.weight"], projection)
        assert torch.equal(sd["text_projection.bias"], torch.zeros(8))
        assert lin is not None
    else:
        assert torch.equal(sd["text_projection"], projection)


def test_resnet_seeded_init_order():
    torch.manual_seed(0)
    model = ModifiedResNet([1, 2, 1, 1], 8, 2, image_size=64, width=8)
    torch.manual_seed(0)
    convs = [nn.Conv2d(3, 4, 3, bias=False), nn.Conv2d(4, 4, 3, bias=False), nn.Conv2d(4, 8, 3, bias=False)]
    inplanes, expected = 8, {}
    for stage, (planes, blocks) in enumerate(zip((8, 16, 32, 64), (1, 2, 1, 1)), start=1):
        for b in range(blocks):
            pre = f"layer{stage}.{b}."
            expected[pre + "conv1.weight"] = nn.Conv2d(inplanes, planes, 1, bias=False).weight
            expected[pre + "conv2.weight"] = nn.Conv2d(planes, planes, 3, bias=False).weight
            expected[pre + "conv3.weight"] = nn.Conv2d(planes, planes * 4, 1, bias=False).weight
            if b == 0:
                expected[pre + "downsample.0.weight"] = nn.Conv2d(inplanes, planes * 4, 1, bias=False).weight
            inplanes = planes * 4
    pos = torch.randn(5, 256) / 256**0.5
    k = nn.Linear(256, 256)  # creation order k, q, v, c; init order q, k, v, c
    q = nn.Linear(256, 256)
    v = nn.Linear(256, 256)
    c = nn.Linear(256, 8)
    std = 256**-0.5
    q_w, k_w, v_w, c_w = (torch.empty_like(m.weight).normal_(std=std) for m in (q, k, v, c))
    sd = model.state_dict()
    for i, conv in enumerate(convs, start=1):
        assert torch.equal(sd[f"conv{i}.weight"], conv.weight)
    for name, weight in expected.items():
        assert torch.equal(sd[name], weight), name
    assert torch.equal(sd["attnpool.positional_embedding"], pos)
    assert torch.equal(sd["attnpool.k_proj.bias"], k.bias) and torch.equal(sd["attnpool.c_proj.bias"], c.bias)
    for name, w in (("q", q_w), ("k", k_w), ("v", v_w), ("c", c_w)):
        assert torch.equal(sd[f"attnpool.{name}_proj.weight"], w)
    assert all(torch.all(v == 0) for n, v in sd.items() if n.endswith("bn3.weight") and n.startswith("layer"))


# ---------------------------------------------------------------------------------------------
# layers


def test_patch_dropout_behaviour():
    x = torch.arange(2 * 11 * 3, dtype=torch.float32).reshape(2, 11, 3)
    pd = PatchDropout(0.5)
    pd.eval()
    assert pd(x) is x
    pd.train()
    torch.manual_seed(7)
    out = pd(x)
    keep = max(1, int(10 * 0.5))
    assert out.shape == (2, keep + 1, 3)
    assert torch.equal(out[:, 0], x[:, 0])  # CLS kept first
    torch.manual_seed(7)
    order = torch.randn(2, 10).topk(keep, dim=-1).indices
    assert torch.equal(out[:, 1:], torch.stack([x[b, 1:][order[b]] for b in range(2)]))
    no_cls = PatchDropout(0.9, exclude_first_token=False).train()
    assert no_cls(x).shape == (2, 1, 3)
    with pytest.raises(AssertionError):
        PatchDropout(1.0)


def test_quick_gelu_and_layer_scale():
    x = torch.randn(5)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    ls = LayerScale(5, 0.5)
    torch.testing.assert_close(ls(x), x * 0.5)
    inplace = LayerScale(5, 2.0, inplace=True)
    y = x.clone()
    inplace(y)
    torch.testing.assert_close(y, x * 2)


# ---------------------------------------------------------------------------------------------
# lock / BN


def test_vit_lock_groups():
    model = VisionTransformer(16, 4, 16, 3, 2, 2.0, output_dim=8, attentional_pool=True, attn_pooler_queries=2)
    model.lock(unlocked_groups=0)
    assert not any(p.requires_grad for p in model.parameters())
    model.lock(unlocked_groups=2)  # [block 2, ln_post] and proj
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    for name, flag in grads.items():
        assert flag == (name.startswith(("transformer.resblocks.2.", "ln_post")) or name == "proj"), name
    model.lock(unlocked_groups=100)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(flag for n, flag in grads.items() if not n.startswith("attn_pool"))
    assert not any(flag for n, flag in grads.items() if n.startswith("attn_pool"))  # quirk: pooler stays frozen
    assert model.no_weight_decay() == {"positional_embedding", "class_embedding"}


def test_resnet_lock_and_freeze_bn():
    model = ModifiedResNet([1, 1, 1, 1], 8, 2, image_size=64, width=8)
    with pytest.raises(AssertionError, match="partial locking"):
        model.lock(unlocked_groups=1)
    model.lock(freeze_bn_stats=True)
    assert not any(p.requires_grad for p in model.parameters())
    assert isinstance(model.bn1, FrozenBatchNorm2d) and isinstance(model.layer1[0].bn3, FrozenBatchNorm2d)
    assert isinstance(getattr(model.layer2[0].downsample, "1"), FrozenBatchNorm2d)
    assert not any(k.endswith("num_batches_tracked") for k in model.state_dict())


def test_freeze_batch_norm_2d_details():
    bn = nn.BatchNorm2d(4, eps=1e-3)
    bn.weight.data.normal_()
    frozen = freeze_batch_norm_2d(bn)
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen.eps == 1e-3
    assert torch.equal(frozen.weight, bn.weight) and frozen.weight.data_ptr() != bn.weight.data_ptr()
    assert frozen.running_mean.data_ptr() == bn.running_mean.data_ptr()  # shared stats
    seq = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    freeze_batch_norm_2d(seq, module_match={"2.0": True})
    assert isinstance(seq[1], nn.BatchNorm2d) and isinstance(seq[2][0], FrozenBatchNorm2d)


# ---------------------------------------------------------------------------------------------
# grad checkpointing, intermediates, TorchScript


@pytest.mark.parametrize(
    "features",
    [{}, {"qk_norm": True, "scale_fc": True}, {"scaled_cosine_attn": True, "scale_heads": True}],
)
def test_grad_checkpointing_matches(features):
    torch.manual_seed(0)
    model = VisionTransformer(16, 4, 16, 2, 2, 2.0, output_dim=8, **features)
    images = torch.randn(2, 3, 16, 16)
    model(images).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(images).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-5)


def test_vit_forward_intermediates():
    torch.manual_seed(0)
    model = VisionTransformer((16, 24), (4, 8), 16, 3, 2, 2.0, output_dim=8).eval()
    images = torch.randn(2, 3, 16, 24)
    out = model.forward_intermediates(images, indices=[0, 2], output_extra_tokens=True)
    assert [t.shape for t in out["image_intermediates"]] == [(2, 16, 4, 3)] * 2
    assert [t.shape for t in out["image_intermediates_prefix"]] == [(2, 1, 16)] * 2
    torch.testing.assert_close(out["image_features"], model(images))
    nlc = model.forward_intermediates(images, indices=1, output_fmt="NLC", intermediates_only=True)
    assert set(nlc) == {"image_intermediates"} and nlc["image_intermediates"][0].shape == (2, 12, 16)
    with pytest.raises(AssertionError, match="NCHW or NLC"):
        model.forward_intermediates(images, output_fmt="NHWC")
    assert model.prune_intermediate_layers(indices=[1]) == [1]
    assert len(model.transformer.resblocks) == 2 and model.proj is None
    assert model(images).shape == (2, 16)


def test_resnet_forward_intermediates():
    torch.manual_seed(0)
    model = ModifiedResNet([1, 1, 1, 1], 8, 2, image_size=64, width=8).eval()
    images = torch.randn(2, 3, 64, 64)
    out = model.forward_intermediates(images, indices=[1])  # crashed in 3.3 (inverted stop_early)
    assert out["image_intermediates"][0].shape == (2, 32, 16, 16)
    torch.testing.assert_close(out["image_features"], model(images))
    early = model.forward_intermediates(images, indices=[0, 1], stop_early=True, intermediates_only=True)
    assert [t.shape[1] for t in early["image_intermediates"]] == [8, 32]
    with pytest.raises(AssertionError, match="NCHW"):
        model.forward_intermediates(images, output_fmt="NLC")


@pytest.mark.parametrize(
    "make",
    [
        lambda: VisionTransformer(16, 4, 16, 2, 2, 2.0, output_dim=8),
        lambda: VisionTransformer(16, 4, 16, 2, 2, 2.0, output_dim=8, attentional_pool=True, output_tokens=True),
        lambda: VisionTransformer(16, 4, 16, 2, 2, 2.0, output_dim=8, qk_norm=True, ls_init_value=0.1),
        lambda: ModifiedResNet([1, 1, 1, 1], 8, 2, image_size=64, width=8),
    ],
)
def test_image_towers_scriptable(make):
    torch.manual_seed(0)
    model = make().eval()
    images = torch.randn(2, 3, 64, 64) if isinstance(model, ModifiedResNet) else torch.randn(2, 3, 16, 16)
    scripted = torch.jit.script(model)
    expected, got = model(images), scripted(images)
    expected = expected[0] if isinstance(expected, tuple) else expected
    got = got[0] if isinstance(got, tuple) else got
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kwargs", [{}, {"proj_bias": True, "no_causal_mask": True}, {"output_dim": None}])
def test_text_tower_scriptable(kwargs):
    torch.manual_seed(0)
    model = TextTransformer(8, 20, 16, 2, 1, **{"output_dim": 8, **kwargs}).eval()
    text = torch.randint(0, 20, (3, 8))
    torch.testing.assert_close(torch.jit.script(model)(text), model(text))


def test_block_type_selection():
    assert type(Transformer(8, 1, 2).resblocks[0]).__name__ == "ResidualAttentionBlock"
    assert type(Transformer(8, 1, 2, scale_fc=True).resblocks[0]).__name__ == "CustomResidualAttentionBlock"
    assert type(Transformer(8, 1, 2, block_type="custom").resblocks[0]).__name__ == "CustomResidualAttentionBlock"
    # any other block type: default block, features silently dropped
    blk = Transformer(8, 1, 2, block_type="default", qk_norm=True).resblocks[0]
    assert type(blk).__name__ == "ResidualAttentionBlock"
    # no features: custom block keys equal default block keys
    assert list(Transformer(8, 1, 2, block_type="custom").state_dict()) == list(Transformer(8, 1, 2).state_dict())
    with pytest.raises(AssertionError, match="scaled cosine and QK"):
        Transformer(8, 1, 2, qk_norm=True, scaled_cosine_attn=True)


def test_transformer_seq_first_matches_batch_first():
    torch.manual_seed(0)
    bf = Transformer(8, 2, 2)
    torch.manual_seed(0)
    sf = Transformer(8, 2, 2, batch_first=False)
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(sf(x), bf(x))


# ---------------------------------------------------------------------------------------------
# utils and shims


def test_tuple_helpers():
    assert to_2tuple(3) == (3, 3)
    assert to_2tuple([1, 2]) == [1, 2]  # iterables are returned unchanged
    assert to_2tuple("ab") == "ab"
    assert to_ntuple(3, 1.5) == (1.5, 1.5, 1.5)
    assert _out_indices_as_tuple(2) == (-2, -1) and _out_indices_as_tuple([0, 3]) == (0, 3)


def test_feature_take_indices():
    assert feature_take_indices(4) == ([0, 1, 2, 3], 3)
    assert feature_take_indices(4, 2) == ([2, 3], 3)
    assert feature_take_indices(4, [0, -1]) == ([0, 3], 3)
    assert feature_take_indices(4, [1, -2], as_set=True) == ({1, 2}, 2)
    with pytest.raises(AssertionError, match=r"last-n \(5\) is out of range \(1 to 4\)"):
        feature_take_indices(4, 5)
    with pytest.raises(AssertionError, match=r"feature index 4 is out of range \(0 to 3\)"):
        feature_take_indices(4, [4])


def test_replace_linear_and_int8_conversion():
    torch.manual_seed(0)
    model = Transformer(8, 1, 2)

    class Marked(nn.Linear):
        def prepare_for_eval(self):
            self.weight.data = self.weight.data.half()

    before = model.resblocks[0].mlp.c_fc.weight.clone()
    replace_linear(model, lambda i, o, b: Marked(i, o, bias=b))
    assert isinstance(model.resblocks[0].mlp.c_fc, Marked) and isinstance(model.resblocks[0].mlp.c_proj, Marked)
    assert not isinstance(model.resblocks[0].attn.out_proj, Marked)
    assert torch.equal(model.resblocks[0].mlp.c_fc.weight, before)
    convert_int8_model_to_inference_mode(model)
    assert model.resblocks[0].mlp.c_fc.weight.dtype == torch.float16
    assert model.get_cast_dtype() == torch.float32  # int8_original_dtype wins


def test_shims_export_33_names():
    from open_clip import modified_resnet, pos_embed, transformer

    for name in (
        "LayerNorm", "LayerNormFp32", "QuickGELU", "LayerScale", "PatchDropout", "Attention", "AttentionalPooler",
        "ResidualAttentionBlock", "CustomResidualAttentionBlock", "Transformer", "CustomTransformer",
        "VisionTransformer", "TextTransformer", "text_global_pool",
    ):  # fmt: skip
        assert hasattr(transformer, name), name
    assert hasattr(modified_resnet, "ModifiedResNet") and hasattr(pos_embed, "get_2d_sincos_pos_embed")
    assert math.isclose(pos_embed.get_2d_sincos_pos_embed(8, 2)[1, 0], math.sin(1.0))


def test_attentional_pool_token_split_and_string_modes():
    torch.manual_seed(0)
    model = VisionTransformer(
        16, 4, 16, 1, 2, 2.0, output_dim=8, attentional_pool=True, attn_pooler_queries=5, output_tokens=True
    ).eval()
    images = torch.randn(2, 3, 16, 16)
    pooled, tokens = model(images)
    assert pooled.shape == (2, 8) and tokens.shape == (2, 4, 8)  # query 0 pooled, Q-1 tokens
    pooled_x = model.ln_post(model.attn_pool(model.transformer(model._embed(images))))
    torch.testing.assert_close(pooled, pooled_x[:, 0] @ model.proj)
    assert type(model.attn_pool.ln_q).__name__ == "LayerNorm" and model.attn_pool.ln_q.eps == 1e-5
    for mode in ("parallel", "cascade"):
        string_mode = VisionTransformer(16, 4, 16, 1, 2, 2.0, output_dim=16, attentional_pool=mode).eval()
        assert string_mode.pool_type == "none" and string_mode.attn_pool_contrastive is not None
        assert string_mode(images).shape == (2, 1, 16)
    with pytest.raises(ValueError, match="attentional_pool"):
        VisionTransformer(16, 4, 16, 1, 2, 2.0, output_dim=16, attentional_pool="sideways")
