"""CoCa.generate against naive references written here: every step re-runs the whole prefix
through ``model.forward``, processors and filters are plain per-row code, and beam search keeps
explicit per-(image, group) beam and hypothesis lists. Also: KV-cache decoder == full re-run."""

import json
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F

from open_clip.coca_model import CoCa
from open_clip.models.coca_decoding import CachedDecoder, FullPrefixDecoder, supports_kv_cache

CASE = pathlib.Path(__file__).parents[1] / "fixtures" / "models" / "coca"
SOT, EOS, PAD = 998, 999, 0


def _cfg(**text_overrides):
    cfg = json.loads((CASE / "config.json").read_text())
    cfg.pop("custom_text")
    cfg["text_cfg"].update(text_overrides)
    return cfg


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids thread hand-offs that dominate on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    from safetensors.torch import load_file

    coca = CoCa(**_cfg())
    coca.load_state_dict(load_file(str(CASE / "weights.safetensors")))
    return coca.eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(3, 3, 32, 32)


# ---- naive pieces -----------------------------------------------------------------------------


def encode(model, images):
    with torch.no_grad():
        return model._encode_image(images)


def naive_next_logits(model, encoded, tokens):
    """3.3's way: the whole prefix through the model (image encoded once), last position's logits."""
    latent, embs = encoded
    with torch.no_grad():
        return model(None, tokens, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1]


def naive_process(seq, row, min_len, eos, penalty):
    row = row.clone()
    if len(seq) < min_len:
        row[eos] = -math.inf
    for tok in set(seq):
        value = row[tok]
        row[tok] = value * penalty if value < 0 else value / penalty
    return row


def naive_top_k(row, k):
    kth = sorted(row.tolist(), reverse=True)[k - 1]
    return torch.where(row < kth, torch.tensor(-math.inf), row)


def naive_top_p(row, p):
    probs = row.softmax(-1).tolist()
    order = sorted(range(len(probs)), key=lambda i: probs[i])  # ascending
    out, mass = row.clone(), 0.0
    for position, i in enumerate(order):
        mass += probs[i]
        if mass <= 1 - p and position < len(order) - 1:
            out[i] = -math.inf
    return out


def naive_sample(model, images, prompt, seq_len, max_seq_len, temperature, filt, min_len, penalty, fixed):
    out = prompt.clone()
    encoded = encode(model, images)
    while True:
        window = out[:, -max_seq_len:]
        logits = naive_next_logits(model, encoded, window)
        running = [b for b in range(out.shape[0]) if out[b, -1] not in (EOS, PAD)]
        column = torch.full((out.shape[0],), PAD, dtype=torch.long)
        if not running and not fixed:
            break
        if running:
            scores = torch.stack([filt(naive_process(window[b].tolist(), logits[b], min_len, EOS, penalty))
                                  for b in running])
            probs = (scores / temperature).softmax(-1)
            if window.shape[1] + 1 == seq_len:
                draws = torch.full((len(running),), EOS)
            else:
                draws = torch.multinomial(probs, 1)[:, 0]
            column[running] = draws
        out = torch.cat([out, column[:, None]], dim=1)
        if out.shape[1] >= seq_len:
            break
    return out


def naive_beam_search(model, image, num_beams, groups, seq_len, min_len, penalty, eos):
    """One image: explicit beams [(tokens, score)] and finished hypotheses per group."""
    size = num_beams // groups
    beams = [[([SOT], 0.0 if j == 0 else -1e9) for j in range(size)] for _ in range(groups)]
    hyps = [[] for _ in range(groups)]  # (normalised score, tokens)
    done = [False] * groups
    latent, embs = encode(model, image)
    encoded = latent.expand(size, -1), embs.expand(size, -1, -1)

    def add(group, tokens, total, length):
        score = total / length
        if len(hyps[group]) < size or score > min(s for s, _ in hyps[group]):
            hyps[group].append((score, tokens))
            if len(hyps[group]) > size:
                hyps[group].remove(min(hyps[group], key=lambda h: h[0]))

    length = 1
    while True:
        for g in range(groups):
            if done[g]:
                continue
            seqs = torch.tensor([tokens for tokens, _ in beams[g]])
            logp = F.log_softmax(naive_next_logits(model, encoded, seqs).float(), -1)
            candidates = []
            for j, (tokens, score) in enumerate(beams[g]):
                total = naive_process(tokens, logp[j], min_len, eos, penalty) + torch.tensor(score)
                candidates += [(value, j, t) for t, value in enumerate(total.tolist())]
            candidates = sorted(candidates, key=lambda c: -c[0])[: 2 * size]
            new = []
            for rank, (value, j, t) in enumerate(candidates):
                if t == eos:
                    if rank < size:
                        add(g, beams[g][j][0], value, length + 1)
                else:
                    new.append((beams[g][j][0] + [t], value))
                if len(new) == size:
                    break
            beams[g] = new
            full = len(hyps[g]) == size
            done[g] = full and min(s for s, _ in hyps[g]) >= candidates[0][0] / (length + 1)
        length += 1
        if all(done) or length >= seq_len:
            break
    for g in range(groups):
        if not done[g]:
            for tokens, score in beams[g]:
                add(g, tokens, score, len(tokens))
    best_score, best = -math.inf, None
    for g in range(groups):
        for score, tokens in hyps[g]:
            if score >= best_score:
                best_score, best = score, tokens
    return best


def naive_beam_batch(model, images, num_beams, groups, seq_len, min_len, penalty, eos):
    best = [naive_beam_search(model, images[i:i + 1], num_beams, groups, seq_len, min_len, penalty, eos)
            for i in range(images.shape[0])]
    width = min(max(len(t) for t in best) + 1, seq_len)
    out = torch.full((len(best), width), PAD)
    for i, tokens in enumerate(best):
        out[i, : len(tokens)] = torch.tensor(tokens)
        if len(tokens) < width:
            out[i, len(tokens)] = eos
    return out


# ---- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_matches_naive(model, images, use_cache):
    expected = naive_sample(model, images, torch.full((3, 1), SOT), 10, 77, 1.0,
                            lambda r: naive_top_k(r, 1), 5, 1.0, False)
    got = model.generate(images, seq_len=10, generation_type="top_k", top_k=1, sot_token_id=SOT,
                         eos_token_id=EOS, pad_token_id=PAD, use_cache=use_cache)
    assert torch.equal(got, expected)


SAMPLING_CASES = [
    # (type, k or p, temperature, repetition penalty, max_seq_len, prompt length)
    ("top_k", 5, 0.8, 1.0, 77, 1),
    ("top_k", 20, 1.3, 1.5, 77, 3),
    ("top_p", 0.9, 1.0, 1.0, 77, 1),
    ("top_p", 0.5, 0.7, 1.2, 4, 2),  # sliding window: the decoder is re-primed every step
]


@pytest.mark.parametrize("case", SAMPLING_CASES)
@pytest.mark.parametrize("use_cache", [True, False])
def test_seeded_sampling_matches_naive(model, images, case, use_cache):
    kind, value, temperature, penalty, max_seq_len, prompt_len = case
    torch.manual_seed(3)
    prompt = torch.cat([torch.full((3, 1), SOT), torch.randint(1, 990, (3, prompt_len - 1))], dim=1)
    filt = (lambda r: naive_top_k(r, value)) if kind == "top_k" else (lambda r: naive_top_p(r, value))
    torch.manual_seed(7)
    expected = naive_sample(model, images, prompt, 12, max_seq_len, temperature, filt, 5, penalty, True)
    torch.manual_seed(7)
    got = model.generate(images, text=prompt, seq_len=12, max_seq_len=max_seq_len, temperature=temperature,
                         generation_type=kind, top_k=value if kind == "top_k" else 1,
                         top_p=value if kind == "top_p" else 0.1, sot_token_id=SOT, eos_token_id=EOS,
                         pad_token_id=PAD, repetition_penalty=penalty, fixed_output_length=True,
                         use_cache=use_cache)
    assert torch.equal(got, expected)


BEAM_CASES = [
    # (num_beams, groups, min_seq_len, repetition penalty, eos id)
    (4, 2, 5, 1.0, EOS),
    (6, 3, 2, 1.3, 331),  # a token this model likes as eos: hypotheses finish early
    (3, 1, 2, 1.0, 331),
]


@pytest.mark.parametrize("case", BEAM_CASES)
@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_matches_naive(model, images, case, use_cache):
    num_beams, groups, min_len, penalty, eos = case
    expected = naive_beam_batch(model, images[:2], num_beams, groups, 8, min_len, penalty, eos)
    got = model.generate(images[:2], seq_len=8, generation_type="beam_search", num_beams=num_beams,
                         num_beam_groups=groups, sot_token_id=SOT, eos_token_id=eos, pad_token_id=PAD,
                         min_seq_len=min_len, repetition_penalty=penalty, use_cache=use_cache)
    assert torch.equal(got, expected)


def test_beam_cases_exercise_eos(model, images):
    got = model.generate(images[:2], seq_len=8, num_beams=6, num_beam_groups=3, sot_token_id=SOT,
                         eos_token_id=331, pad_token_id=PAD, min_seq_len=2, repetition_penalty=1.3)
    assert (got[:, :-1] == 331).any(), "no hypothesis ended early: the eos bookkeeping went untested"


def _decoders(coca, images, rows):
    latent, embs = coca._encode_image(images)
    index = torch.arange(rows) % images.shape[0]
    return CachedDecoder(coca, embs[index]), FullPrefixDecoder(coca, latent[index], embs[index])


@pytest.mark.parametrize("embed_cls,layer_scale", [(True, False), (False, False), (True, True)])
def test_kv_cache_matches_full_prefix(images, embed_cls, layer_scale):
    """Step by step with padding inside the text (CLS-mask quirk) and beam-style reordering."""
    torch.manual_seed(0)
    cfg = _cfg(embed_cls=embed_cls)
    if layer_scale:
        cfg["text_cfg"]["ls_init_value"] = cfg["multimodal_cfg"]["ls_init_value"] = 0.5
        cfg["quick_gelu"] = True
    coca = CoCa(**cfg).eval()
    assert supports_kv_cache(coca)
    tokens = torch.randint(1, 990, (6, 12))
    tokens[1, 3:5] = PAD
    tokens[4, 6] = PAD
    tokens[2, 2] = PAD
    with torch.no_grad():
        cached, full = _decoders(coca, images, 6)
        torch.testing.assert_close(cached.reset(tokens[:, :3]), full.reset(tokens[:, :3]), atol=1e-5, rtol=1e-4)
        order = torch.tensor([3, 4, 5, 0, 4, 2])  # beams move only between rows of the same image
        for step in range(3, 12):
            if step == 7:
                cached.reorder(order)
                full.reorder(order)
            torch.testing.assert_close(cached.extend(tokens[:, step]), full.extend(tokens[:, step]),
                                       atol=1e-5, rtol=1e-4)


def test_generate_restores_mode_and_validates(model, images):
    model.train()
    model.generate(images[:1], seq_len=6, generation_type="top_k", sot_token_id=SOT, eos_token_id=EOS)
    assert model.training
    model.eval()
    model.generate(images[:1], seq_len=6, num_beams=2, num_beam_groups=1, sot_token_id=SOT, eos_token_id=EOS)
    assert not model.training
    with pytest.raises(AssertionError, match="seq_len must be larger than min_seq_len"):
        model.generate(images, seq_len=5, min_seq_len=5)
    with pytest.raises(ValueError, match="generation_type has to be one of"):
        model.generate(images, generation_type="greedy")
    with pytest.raises(ValueError, match="num_beam_groups"):
        model.generate(images, num_beams=4, num_beam_groups=3)


def test_prompt_shapes_and_fixed_length(model, images):
    prompt = torch.tensor([SOT, 5, 6])
    out = model.generate(images[:1], text=prompt, seq_len=9, generation_type="top_k", sot_token_id=SOT,
                         eos_token_id=EOS, pad_token_id=PAD, fixed_output_length=True)
    assert out.dim() == 1 and out.shape[0] == 9 and torch.equal(out[:3], prompt)
    assert out[-1].item() in (EOS, PAD)  # eos forced at the last position unless already finished
    beams = model.generate(images, seq_len=9, num_beams=2, num_beam_groups=1, sot_token_id=SOT,
                           eos_token_id=3, pad_token_id=PAD, min_seq_len=2, fixed_output_length=True)
    assert beams.shape == (3, 9)


def test_hf_text_tower_falls_back_to_full_prefix(tmp_path, images):
    transformers = pytest.importorskip("transformers")
    config = transformers.RobertaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64,
                                        max_position_embeddings=40, pad_token_id=1)
    config.save_pretrained(tmp_path)
    cfg = _cfg()
    cfg["text_cfg"] = {"hf_model_name": str(tmp_path), "hf_model_pretrained": False, "hf_proj_type": "linear",
                       "output_tokens": True, "width": 32, "vocab_size": 1000}
    coca = CoCa(**cfg).eval()
    assert not supports_kv_cache(coca)
    text = torch.randint(3, 990, (3, 10))
    out = coca(images, text)
    assert out["logits"].shape == (3, 9, 1000)
    torch.manual_seed(0)
    a = coca.generate(images, seq_len=8, generation_type="top_k", top_k=3, sot_token_id=0, eos_token_id=2,
                      pad_token_id=1)
    torch.manual_seed(0)
    b = coca.generate(images, seq_len=8, generation_type="top_k", top_k=3, sot_token_id=0, eos_token_id=2,
                      pad_token_id=1, use_cache=False)
    assert torch.equal(a, b)


def test_custom_stopping_criteria(model, images):
    def stop_at_seven(input_ids, scores):
        return input_ids.shape[1] >= 7

    out = model.generate(images, seq_len=20, generation_type="top_k", sot_token_id=SOT, eos_token_id=EOS,
                         pad_token_id=PAD, stopping_criteria=[stop_at_seven])
    expected = naive_sample(model, images, torch.full((3, 1), SOT), 7, 77, 1.0, lambda r: naive_top_k(r, 1), 5, 1.0,
                            False)
    # eos is forced only at seq_len (20), so the first 7 tokens are the greedy ones
    assert out.shape[1] == 7
    assert torch.equal(out[:, :6], expected[:, :6])
