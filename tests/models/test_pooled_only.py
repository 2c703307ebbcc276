"""The last block computed at the pooled token only (``forward_at``): equal to the full stack at
that token, in values and gradients, for the block itself against a naive gather, the vision tower
(``last_block_pooled_only``) and the text towers (part of the early stop); fewer FLOPs; fallbacks
where the shortcut would change what a hook or a custom block sees."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from open_clip.models.attention import ResidualAttentionBlock, Transformer, build_causal_mask
from open_clip.models.clip import CLIP, CustomTextCLIP
from open_clip.models.vision_transformer import VisionTransformer

WIDTH, HEADS = 32, 4


def assert_close_scaled(actual, expected, name=""):
    scale = max(float(expected.detach().abs().max()), 1.0)
    torch.testing.assert_close(actual, expected, atol=2e-5 * scale, rtol=0, msg=name)


def param_grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("ls_init_value", [None, 0.5])
@pytest.mark.parametrize("masked", [False, True])
def test_block_forward_at_equals_gathered_forward(ls_init_value, masked):
    torch.manual_seed(0)
    block = ResidualAttentionBlock(WIDTH, HEADS, ls_init_value=ls_init_value)
    x = torch.randn(5, 9, WIDTH)
    positions = torch.tensor([0, 8, 3, 3, 5])
    mask = build_causal_mask(9) if masked else None
    weights = torch.randn(5, 1, WIDTH)

    x_full = x.clone().requires_grad_()
    full = block(x_full, attn_mask=mask)[torch.arange(5), positions].unsqueeze(1)
    (full * weights).sum().backward()
    full_grads = param_grads(block)
    block.zero_grad()

    x_at = x.clone().requires_grad_()
    at = block.forward_at(x_at, positions, mask)
    (at * weights).sum().backward()
    assert at.shape == (5, 1, WIDTH)
    assert_close_scaled(at, full)
    assert_close_scaled(x_at.grad, x_full.grad, "input grad")
    at_grads = param_grads(block)
    assert at_grads.keys() == full_grads.keys()
    for name in full_grads:
        assert_close_scaled(at_grads[name], full_grads[name], name)


@pytest.mark.parametrize("kwargs", [{}, {"qk_norm": True}])  # custom blocks fall back to the full stack
def test_transformer_forward_at_with_checkpointing_and_custom_fallback(kwargs):
    torch.manual_seed(0)
    x = torch.randn(3, 7, WIDTH)
    positions = torch.tensor([6, 0, 2])
    mask = build_causal_mask(7)
    stack = Transformer(WIDTH, 3, HEADS, **kwargs)
    expected = stack(x, attn_mask=mask)[torch.arange(3), positions].unsqueeze(1)
    expected.sum().backward()
    expected_grads = param_grads(stack)
    for checkpointing in (False, True):
        stack.zero_grad()
        stack.grad_checkpointing = checkpointing
        out = stack.forward_at(x, positions, mask)
        out.sum().backward()
        assert_close_scaled(out, expected)
        grads = param_grads(stack)
        assert grads.keys() == expected_grads.keys()
        for name in grads:
            assert_close_scaled(grads[name], expected_grads[name], name)


VISION_CASES = [
    {},
    {"ls_init_value": 0.1},
    {"final_ln_after_pool": True},
    {"no_ln_pre": True},
    {"patch_dropout": 0.5},
    {"qk_norm": True},  # custom blocks: fallback, still exact
]


def make_vit(**kwargs):
    torch.manual_seed(0)
    return VisionTransformer(16, 4, WIDTH, 2, HEADS, 4.0, output_dim=8, **kwargs)


@pytest.mark.parametrize("kwargs", VISION_CASES)
def test_vision_tower_pooled_only_equals_full(kwargs):
    model = make_vit(**kwargs).train()
    images = torch.randn(6, 3, 16, 16)
    weights = torch.randn(6, 8)

    def run(pooled_only):
        model.zero_grad()
        model.last_block_pooled_only = pooled_only
        torch.manual_seed(1)  # same patch-dropout draw in both runs
        out = model(images)
        (out * weights).sum().backward()
        return out, param_grads(model)

    out, grads = run(True)
    out_full, grads_full = run(False)
    assert_close_scaled(out, out_full)
    assert grads.keys() == grads_full.keys()
    for name in grads_full:
        assert_close_scaled(grads[name], grads_full[name], name)


def count_flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def test_vision_tower_pooled_only_saves_last_block_work():
    model = make_vit().eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        fast = count_flops(lambda: model(images))
        model.last_block_pooled_only = False
        full = count_flops(lambda: model(images))
    # the last block skips, for 16 of 17 tokens of each of 4 images, the query projection and
    # out_proj (W^2 MACs each) and the MLP (8 W^2): 10 W^2 MACs = 20 W^2 FLOPs per token
    assert full - fast >= 4 * 16 * 20 * WIDTH**2


@pytest.mark.parametrize("kwargs", [{"output_tokens": True}, {"pool_type": "avg"}, {"attentional_pool": True}])
def test_vision_tower_keeps_every_token_when_they_are_read(kwargs):
    model = make_vit(**kwargs).eval()
    seen = []
    model.transformer.resblocks[-1].mlp.register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    assert seen == [17]


def test_hooks_see_full_blocks():
    model = make_vit().eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(images)
    seen = []
    handle = model.transformer.resblocks[-1].register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        out = model(images)
    handle.remove()
    assert seen == [(2, 17, WIDTH)]
    assert_close_scaled(out, expected)
    seen.clear()
    handle = model.transformer.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        model(images)
    handle.remove()
    assert seen == [(2, 17, WIDTH)]


CTX, VOCAB, EOT = 12, 50, 49


def random_text(batch, seed):
    gen = torch.Generator().manual_seed(seed)
    text = torch.zeros(batch, CTX, dtype=torch.long)
    for b in range(batch):
        n = int(torch.randint(0, CTX, (1,), generator=gen))
        text[b, :n] = torch.randint(1, EOT, (n,), generator=gen)
        text[b, n] = EOT
    return text


def make_clip(cls, **text_kwargs):
    torch.manual_seed(0)
    text_cfg = dict(context_length=CTX, vocab_size=VOCAB, width=WIDTH, heads=HEADS, layers=2, **text_kwargs)
    vision_cfg = dict(layers=2, width=WIDTH, head_width=8, patch_size=4, image_size=16)
    return cls(8, vision_cfg, text_cfg).train()


def set_full(model, full):
    if isinstance(model, CLIP):
        model.text_early_stop = not full
    else:
        model.text.early_stop = not full
    model.visual.last_block_pooled_only = not full


@pytest.mark.parametrize("cls", [CLIP, CustomTextCLIP])
@pytest.mark.parametrize("text_kwargs", [{}, {"pool_type": "eos", "eos_id": 7}, {"ls_init_value": 0.2}])
def test_clip_training_gradients_equal_full_computation(cls, text_kwargs):
    model = make_clip(cls, **text_kwargs)
    images = torch.randn(10, 3, 16, 16)
    text = random_text(10, seed=3)
    if text_kwargs.get("eos_id"):
        text[::2, 1] = 7

    def run(full):
        model.zero_grad()
        set_full(model, full)
        image_features, text_features, logit_scale = model(images, text)
        logits = logit_scale * image_features @ text_features.T
        labels = torch.arange(10)
        loss = torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)
        loss.backward()
        return text_features, param_grads(model)

    features, grads = run(False)
    features_full, grads_full = run(True)
    assert_close_scaled(features, features_full)
    assert grads.keys() == grads_full.keys()
    for name in grads_full:
        assert_close_scaled(grads[name], grads_full[name], name)


@pytest.mark.parametrize("cls", [CLIP, CustomTextCLIP])
def test_text_embedding_looked_up_once_per_batch(cls):
    model = make_clip(cls)
    embedding = model.token_embedding if cls is CLIP else model.text.token_embedding
    calls = []
    embedding.register_forward_hook(lambda m, a, out: calls.append(tuple(out.shape)))
    text = random_text(16, seed=4)
    model.encode_text(text).sum().backward()
    longest = int(text.argmax(-1).max()) + 1
    assert calls == [(16, longest, WIDTH)]
    assert embedding.weight.grad is not None


def test_text_pooled_only_saves_flops():
    model = make_clip(CLIP).eval()
    text = random_text(8, seed=5)
    text[0, : CTX - 1] = 1  # one full-length row: the batch is not trimmed as a whole
    text[0, -1] = EOT
    with torch.no_grad():
        fast = count_flops(lambda: model.encode_text(text))
        # a hook on the last block makes it run over every token, with the length groups unchanged
        handle = model.transformer.resblocks[-1].register_forward_hook(lambda m, a, out: None)
        groups_only = count_flops(lambda: model.encode_text(text))
        handle.remove()
        model.text_early_stop = False
        full = count_flops(lambda: model.encode_text(text))
    assert fast < 0.75 * full
    # the last block skips, for every kept token but the pooled one, query / out_proj / MLP: 20 W^2 FLOPs each
    kept = int((text.argmax(-1) + 1).sum())
    assert groups_only - fast >= (kept - 8) * 20 * WIDTH**2
