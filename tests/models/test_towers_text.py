"""Text tower: masks (causal, CoCa legacy CLS mask, pad mask), pooling helper, lock_text_tower,
and the early stop under TorchScript and tracing (the early stop itself: test_fast_paths.py)."""

import pytest
import torch
from torch import nn

from open_clip.models.attention import build_causal_mask
from open_clip.models.text_transformer import (
    TextTransformer,
    lock_text_tower,
    text_global_pool,
)

VOCAB, CTX, EOT = 64, 16, 63


def random_batch(seed: int, batch: int = 9, eos_id=None) -> torch.Tensor:
    """Token rows of random lengths: ids, EOT (largest id), zero padding; some rows hold eos_id."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.zeros(batch, CTX, dtype=torch.long)
    max_len = int(torch.randint(2, CTX, (1,), generator=gen))
    for b in range(batch):
        n = int(torch.randint(0, max_len, (1,), generator=gen))
        text[b, :n] = torch.randint(1, EOT, (n,), generator=gen)
        text[b, n] = EOT
        if eos_id is not None and b % 3 != 2:
            text[b, int(torch.randint(0, n + 1, (1,), generator=gen))] = eos_id
    return text


def make_tower(**kwargs) -> TextTransformer:
    torch.manual_seed(0)
    kwargs.setdefault("output_dim", 8)
    return TextTransformer(CTX, VOCAB, 32, 4, 2, **kwargs).eval()


def test_early_stop_output_tokens_full_length():
    model = make_tower(output_tokens=True)
    text = random_batch(1)
    pooled, tokens = model(text)
    assert tokens.shape == (text.shape[0], CTX, 32)
    model.early_stop = False
    torch.testing.assert_close(model(text)[0], pooled)


def test_early_stop_scripted_and_traced():
    model = make_tower()
    text_a, text_b = random_batch(3), random_batch(4)
    with torch.no_grad():
        expected = model(text_b)
        scripted = torch.jit.script(model)
        assert torch.equal(scripted(text_b), expected)
        # tracing must not bake in text_a's lengths
        traced = torch.jit.trace(model, (text_a,), check_trace=False)
        assert torch.equal(traced(text_b), expected)


def test_causal_mask_values():
    mask = build_causal_mask(5)
    assert mask.dtype == torch.float32 and mask.shape == (5, 5)
    for i in range(5):
        for j in range(5):
            assert mask[i, j] == (0.0 if j <= i else float("-inf"))
    model = make_tower()
    assert "attn_mask" in dict(model.named_buffers()) and "attn_mask" not in model.state_dict()
    assert make_tower(no_causal_mask=True).attn_mask is None


@pytest.mark.parametrize("correct_cls_mask", [False, True])
def test_coca_cls_mask(correct_cls_mask):
    torch.manual_seed(0)
    model = TextTransformer(6, VOCAB, 8, 2, 1, output_dim=4, embed_cls=True, correct_cls_mask=correct_cls_mask)
    text = torch.tensor([[5, 7, 9, 0, 0, 0]])
    _, mask = model._embeds(text)
    assert mask.shape == (2, 7, 7)  # (B*H, L+1, L+1)
    assert torch.equal(mask[0], mask[1])
    finite = torch.isfinite(mask[0])
    assert finite.any(dim=-1).all()  # no fully masked row
    cls_row = finite[6].nonzero().flatten().tolist()
    # legacy: key 0 always valid, key j valid iff text[j-1] != pad -> keys 0..3; CLS can't see itself
    assert cls_row == ([0, 1, 2, 6] if correct_cls_mask else [0, 1, 2, 3])
    # causal part: row i never sees keys > i
    for i in range(7):
        assert not finite[i, i + 1 :].any()


def test_pad_mask_bidirectional():
    model = make_tower(no_causal_mask=True, use_pad_mask=True, pad_id=0, pool_type="first")
    assert model.use_pad_mask
    text = torch.tensor([[4, 6, 0, 0] + [0] * (CTX - 4)])
    _, mask = model._embeds(text)
    assert mask.shape == (4, CTX, CTX)
    assert torch.isfinite(mask[:, :, :2]).all() and not torch.isfinite(mask[:, :, 2:]).any()
    # use_pad_mask is only honoured for bidirectional towers
    assert not make_tower(use_pad_mask=True).use_pad_mask


def test_text_global_pool():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    text = torch.tensor([[1, 9, 9, 2], [3, 2, 5, 1]])
    torch.testing.assert_close(text_global_pool(x, text, "first"), x[:, 0])
    torch.testing.assert_close(text_global_pool(x, text, "last"), x[:, -1])
    torch.testing.assert_close(text_global_pool(x, text, "argmax"), torch.stack([x[0, 1], x[1, 2]]))
    # eos: first occurrence; absent -> index 0
    torch.testing.assert_close(text_global_pool(x, text, "eos", eos_token_id=9), torch.stack([x[0, 1], x[1, 0]]))
    assert text_global_pool(x, text, "none") is x
    with pytest.raises(AssertionError):
        text_global_pool(x, None, "argmax")
    with pytest.raises(AssertionError):
        text_global_pool(x, text, "eos")


def test_bad_pool_type():
    with pytest.raises(AssertionError):
        make_tower(pool_type="mean")


def _grad_pattern(model: TextTransformer) -> dict:
    return {n: p.requires_grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("unlocked", [0, 1, 2, 3, 4, 10])
@pytest.mark.parametrize("proj_bias", [False, True])
def test_lock_text_tower(unlocked, proj_bias):
    torch.manual_seed(0)
    model = TextTransformer(CTX, VOCAB, 16, 2, 3, output_dim=8, embed_cls=True, proj_bias=proj_bias)
    model.lock(unlocked_layers=unlocked)
    # groups: [embeddings + cls], block0, block1, [block2, ln_final], [projection]
    groups = [
        ("token_embedding", "positional_embedding", "cls_emb"),
        ("transformer.resblocks.0.",),
        ("transformer.resblocks.1.",),
        ("transformer.resblocks.2.", "ln_final"),
        ("text_projection",),
    ]
    trainable = groups[len(groups) - min(unlocked, len(groups)) :] if unlocked else []
    prefixes = tuple(p for g in trainable for p in g)
    for name, flag in _grad_pattern(model).items():
        assert flag == name.startswith(prefixes), name
    with pytest.raises(AssertionError, match="Unfreezing LayerNorm"):
        model.lock(freeze_layer_norm=False)


def test_lock_text_tower_on_wrappers():
    torch.manual_seed(0)
    tower = TextTransformer(CTX, VOCAB, 16, 2, 2, output_dim=8)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.text = tower
            self.other = nn.Linear(2, 2)

    wrapped = Wrapped()
    lock_text_tower(wrapped, 1)
    assert wrapped.other.weight.requires_grad
    assert tower.text_projection.requires_grad and not tower.ln_final.weight.requires_grad

    class ClipLike(nn.Module):  # CLIP: text modules unpacked to top level
        def __init__(self):
            super().__init__()
            for name in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
                setattr(self, name, getattr(tower, name))
            self.visual = nn.Linear(2, 2)

    for p in tower.parameters():
        p.requires_grad = True
    clip = ClipLike()
    lock_text_tower(clip, 2)
    assert clip.visual.weight.requires_grad
    assert tower.ln_final.weight.requires_grad and tower.transformer.resblocks[1].ln_1.weight.requires_grad
    assert not tower.transformer.resblocks[0].ln_1.weight.requires_grad
    assert not tower.token_embedding.weight.requires_grad


def test_no_weight_decay_and_grad_checkpointing():
    assert make_tower().no_weight_decay() == {"positional_embedding"}
    assert make_tower(embed_cls=True).no_weight_decay() == {"positional_embedding", "cls_emb"}
    model = make_tower()
    model.set_grad_checkpointing(True)
    assert model.transformer.grad_checkpointing


def test_forward_intermediates_text():
    model = make_tower(embed_cls=True, output_tokens=True)
    text = random_batch(2)
    out = model.forward_intermediates(text, indices=[0, -1], output_extra_tokens=True)
    assert [t.shape for t in out["text_intermediates"]] == [(text.shape[0], CTX, 32)] * 2
    assert [t.shape for t in out["text_intermediates_suffix"]] == [(text.shape[0], 1, 32)] * 2
    torch.testing.assert_close(out["text_features"], model(text)[0])
    only = model.forward_intermediates(text, indices=1, intermediates_only=True, normalize_intermediates=True)
    assert set(only) == {"text_intermediates"}
    with pytest.raises(AssertionError, match="NLC"):
        model.forward_intermediates(text, output_fmt="NCHW")
    assert model.prune_intermediate_layers(indices=1) == [1]
    assert model.text_projection is None
