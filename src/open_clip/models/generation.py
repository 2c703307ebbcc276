"""Caption generation for CoCa, natively on torch (no transformers dependency).

Owns the logit processors (min length, repetition penalty), the top-k / top-p filters, stopping
criteria, the sampling loop (3.3's procedure step for step), the group (diverse) beam search with
its hypothesis bookkeeping (Hugging Face 4.x ``BeamSearchScorer`` semantics), and
``generate_captions`` which wires them to a CoCa model. The loops only see a decoder object
(``coca_decoding.py``) with ``reset`` / ``extend`` / ``reorder``.
"""

from collections.abc import Callable
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from .coca_decoding import CachedDecoder, FullPrefixDecoder, supports_kv_cache

__all__ = [
    "GENERATION_TYPES",
    "MaxLengthCriteria",
    "apply_logit_processors",
    "top_k_filter",
    "top_p_filter",
    "BeamHypotheses",
    "GroupBeamScorer",
    "sample_captions",
    "beam_search_captions",
    "generate_captions",
]

GENERATION_TYPES = ("top_k", "top_p", "beam_search")
DEFAULT_SOT, DEFAULT_EOS = 49406, 49407


# ---- processors, filters, stopping ----------------------------------------------------------


def apply_logit_processors(
    input_ids: torch.Tensor, scores: torch.Tensor, min_length: int, eos_token_id: int, repetition_penalty: float
) -> torch.Tensor:
    """Min-length (eos → -inf while the sequence, SOT included, is shorter than ``min_length``)
    then repetition penalty (scores of tokens already in ``input_ids``: negative × penalty,
    positive ÷ penalty). Returns a new tensor (B, V)."""
    scores = scores.clone()
    if input_ids.shape[-1] < min_length:
        scores[:, eos_token_id] = float("-inf")
    if repetition_penalty != 1.0:
        seen = torch.gather(scores, 1, input_ids)
        seen = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
        scores.scatter_(1, input_ids, seen)
    return scores


def top_k_filter(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest scores per row (ties with the k-th kept), the rest -inf."""
    k = min(max(top_k, 1), scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: drop the tokens whose ascending cumulative softmax mass is <= 1 - top_p
    (the most likely token is always kept), the rest -inf."""
    sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


class MaxLengthCriteria:
    """Stop once sequences have ``max_length`` tokens (per row, as a bool tensor)."""

    def __init__(self, max_length: int):
        self.max_length = max_length

    def __call__(self, input_ids: torch.Tensor, scores: Optional[torch.Tensor] = None) -> torch.Tensor:
        done = input_ids.shape[-1] >= self.max_length
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def _as_criteria_list(criteria) -> list:
    if criteria is None:
        return []
    if callable(criteria):  # a single criterion or an HF StoppingCriteriaList
        return [criteria]
    return list(criteria)


def _should_stop(criteria: list, input_ids: torch.Tensor) -> bool:
    """True when every row is done by at least one criterion (HF list semantics)."""
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for criterion in criteria:
        result = criterion(input_ids, None)
        done = done | torch.as_tensor(result, device=input_ids.device).to(torch.bool)
    return bool(done.all())


def _criteria_max_length(criteria: list) -> Optional[int]:
    for criterion in criteria:
        max_length = getattr(criterion, "max_length", None)
        if max_length is not None:
            return max_length
    return None


# ---- sampling ---------------------------------------------------------------------------------


def sample_captions(
    decoder,
    prompt: torch.Tensor,
    seq_len: int,
    max_seq_len: int,
    temperature: float,
    filter_fn: Callable[[torch.Tensor], torch.Tensor],
    min_seq_len: int,
    eos_token_id: int,
    pad_token_id: int,
    repetition_penalty: float,
    criteria: list,
    fixed_output_length: bool,
    incremental: bool = True,
) -> torch.Tensor:
    """3.3's sampling loop over a decoder; returns the prompt plus sampled tokens (B, <= seq_len).

    Each step: rows whose last token is eos or pad are finished and get pad; the others get
    processors → ``filter_fn`` → softmax(scores / temperature) → one ``torch.multinomial`` draw
    over the unfinished rows (eos forced when the window length + 1 == seq_len).
    ``incremental`` extends the decoder by the new column while the window does not slide.
    """
    out = prompt
    logits: Optional[torch.Tensor] = None
    while True:
        window = out[:, -max_seq_len:]
        last = out[:, -1]
        finished = (last == eos_token_id) | (last == pad_token_id)
        sample = torch.full_like(last, pad_token_id)
        if bool(finished.all()):
            if not fixed_output_length:
                break
        else:
            # every row still running has been extended by the previous column, so the cache is whole
            if logits is None or not incremental or out.shape[1] > max_seq_len:
                logits = decoder.reset(window)
            else:
                logits = decoder.extend(out[:, -1])
            active = ~finished
            scores = apply_logit_processors(
                window[active], logits[active], min_seq_len, eos_token_id, repetition_penalty
            )
            probs = F.softmax(filter_fn(scores) / temperature, dim=-1)
            if window.shape[1] + 1 == seq_len:
                sample[active] = eos_token_id
            else:
                sample[active] = torch.multinomial(probs, 1)[:, 0]
        out = torch.cat([out, sample[:, None]], dim=1)
        if _should_stop(criteria, out):
            break
    return out


# ---- beam search ------------------------------------------------------------------------------


class BeamHypotheses:
    """The ``size`` best finished hypotheses of one (batch row, beam group), scored by
    sum / length ** length_penalty (HF 4.x ``BeamHypotheses``, no early stopping)."""

    def __init__(self, size: int, length_penalty: float = 1.0):
        self.size = size
        self.length_penalty = length_penalty
        self.beams: list[tuple[float, torch.Tensor]] = []
        self.worst_score = 1e9

    def add(self, tokens: torch.Tensor, sum_score: float, length: int) -> None:
        score = sum_score / (length**self.length_penalty)
        if len(self.beams) < self.size or score > self.worst_score:
            self.beams.append((score, tokens))
            if len(self.beams) > self.size:
                # drop the worst (the earliest among equals)
                worst = min(range(len(self.beams)), key=lambda i: (self.beams[i][0], i))
                del self.beams[worst]
                self.worst_score = min(s for s, _ in self.beams)
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_score: float, length: int) -> bool:
        """Full, and no open beam can beat the worst kept hypothesis."""
        if len(self.beams) < self.size:
            return False
        return self.worst_score >= best_sum_score / (length**self.length_penalty)


class GroupBeamScorer:
    """Hypothesis bookkeeping for ``batch_size`` x ``num_groups`` groups of ``group_size`` beams."""

    def __init__(self, batch_size: int, num_groups: int, group_size: int, length_penalty: float = 1.0):
        self.batch_size = batch_size
        self.num_groups = num_groups
        self.group_size = group_size
        self.hyps = [[BeamHypotheses(group_size, length_penalty) for _ in range(num_groups)] for _ in range(batch_size)]
        self.done = [[False] * num_groups for _ in range(batch_size)]

    @property
    def is_done(self) -> bool:
        return all(all(row) for row in self.done)

    def process(
        self,
        group: int,
        group_ids: torch.Tensor,
        top_scores: torch.Tensor,
        top_tokens: torch.Tensor,
        top_beams: torch.Tensor,
        eos_token_id: int,
        pad_token_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of one group. ``group_ids`` (B*G, L) are the group's sequences; the top
        candidates (B, 2G) are sorted best first with their source beam in the group.
        Returns next (scores, tokens, source rows into group_ids), each (B*G,)."""
        gsize = self.group_size
        cur_len = group_ids.shape[-1] + 1  # length the candidate scores were computed for
        scores, tokens, beams = top_scores.tolist(), top_tokens.tolist(), top_beams.tolist()
        next_scores = [0.0] * (self.batch_size * gsize)
        next_tokens = [pad_token_id] * (self.batch_size * gsize)
        next_rows = [0] * (self.batch_size * gsize)
        for b in range(self.batch_size):
            if self.done[b][group]:
                continue  # finished group: pad, source row 0 (as HF)
            kept = 0
            for rank, (score, token, beam) in enumerate(zip(scores[b], tokens[b], beams[b])):
                row = b * gsize + beam
                if token == eos_token_id:
                    if rank < gsize:  # only an eos among the top group_size candidates ends a beam
                        self.hyps[b][group].add(group_ids[row].clone(), score, cur_len)
                else:
                    slot = b * gsize + kept
                    next_scores[slot], next_tokens[slot], next_rows[slot] = score, token, row
                    kept += 1
                if kept == gsize:
                    break
            if kept < gsize:
                raise RuntimeError(f"beam search found only {kept} non-eos candidates for {gsize} beams")
            self.done[b][group] = self.hyps[b][group].is_done(max(scores[b]), cur_len)
        device = group_ids.device
        return (
            torch.tensor(next_scores, dtype=top_scores.dtype, device=device),
            torch.tensor(next_tokens, dtype=group_ids.dtype, device=device),
            torch.tensor(next_rows, dtype=torch.long, device=device),
        )

    def finalize(
        self,
        input_ids: torch.Tensor,
        beam_scores: torch.Tensor,
        max_length: Optional[int],
        eos_token_id: int,
        pad_token_id: int,
    ) -> torch.Tensor:
        """Add the open beams of unfinished groups, pick the best hypothesis per batch row, and
        lay them out (B, L): eos appended when shorter than the longest/max length, pad after."""
        num_beams = self.num_groups * self.group_size
        scores = beam_scores.tolist()
        best = []
        for b in range(self.batch_size):
            for g in range(self.num_groups):
                if self.done[b][g]:
                    continue
                for j in range(self.group_size):
                    row = b * num_beams + g * self.group_size + j
                    self.hyps[b][g].add(input_ids[row], scores[row], input_ids.shape[-1])
            candidates = [beam for g in range(self.num_groups) for beam in self.hyps[b][g].beams]
            # the last of the equally best, as a stable sort + pop() would give
            best.append(max(reversed(candidates), key=lambda c: c[0])[1])
        lengths = [len(t) for t in best]
        width = max(lengths) + 1
        if max_length is not None:
            width = min(width, max_length)
        out = input_ids.new_full((self.batch_size, width), pad_token_id)
        for i, tokens in enumerate(best):
            out[i, : lengths[i]] = tokens
            if lengths[i] < width:
                out[i, lengths[i]] = eos_token_id
        return out


def beam_search_captions(
    decoder,
    batch_size: int,
    num_beams: int,
    num_beam_groups: int,
    sot_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    min_seq_len: int,
    repetition_penalty: float,
    criteria: list,
    device: Union[str, torch.device] = "cpu",
    log_probs: bool = True,
) -> torch.Tensor:
    """Group beam search over ``batch_size`` x ``num_beams`` decoder rows (row b*num_beams + j),
    all starting from SOT; returns the best hypothesis per batch row (B, L).

    Candidates are scored by ``log_softmax(logits)`` (``log_probs=False``: raw logits, 3.3's
    bug, kept only to check the bookkeeping against 3.3), processors applied, plus the running
    beam score; each group keeps its ``2 * group_size`` best candidates for the scorer.
    """
    group_size = num_beams // num_beam_groups
    rows = batch_size * num_beams
    input_ids = torch.full((rows, 1), sot_token_id, dtype=torch.long, device=device)
    beam_scores = torch.full((batch_size, num_beams), -1e9, dtype=torch.float32, device=device)
    beam_scores[:, ::group_size] = 0  # one live beam per group at the start
    beam_scores = beam_scores.view(-1)
    scorer = GroupBeamScorer(batch_size, num_beam_groups, group_size)
    starts = torch.arange(batch_size, device=device)[:, None] * num_beams
    logits = decoder.reset(input_ids)
    while True:
        token_scores = logits.float()
        if log_probs:
            token_scores = F.log_softmax(token_scores, dim=-1)
        vocab = token_scores.shape[-1]
        current_tokens = torch.zeros(rows, dtype=torch.long, device=device)
        reorder = torch.zeros(rows, dtype=torch.long, device=device)
        for group in range(num_beam_groups):
            first = group * group_size
            group_rows = (starts + first + torch.arange(group_size, device=device)).view(-1)  # (B*G,)
            group_ids = input_ids[group_rows]
            scores = apply_logit_processors(
                group_ids, token_scores[group_rows], min_seq_len, eos_token_id, repetition_penalty
            )
            scores = (scores + beam_scores[group_rows, None]).view(batch_size, group_size * vocab)
            top_scores, top_index = torch.topk(scores, 2 * group_size, dim=1, largest=True, sorted=True)
            new_scores, new_tokens, source = scorer.process(
                group,
                group_ids,
                top_scores,
                top_index % vocab,
                torch.div(top_index, vocab, rounding_mode="floor"),
                eos_token_id,
                pad_token_id,
            )
            beam_scores[group_rows] = new_scores
            input_ids[group_rows] = group_ids[source]
            current_tokens[group_rows] = new_tokens
            # decoder row of each source beam: (its batch row) * num_beams + group offset + beam
            reorder[group_rows] = num_beams * (source // group_size) + first + source % group_size
        input_ids = torch.cat([input_ids, current_tokens[:, None]], dim=1)
        if scorer.is_done or _should_stop(criteria, input_ids):
            break
        decoder.reorder(reorder)
        logits = decoder.extend(current_tokens)
    return scorer.finalize(input_ids, beam_scores, _criteria_max_length(criteria), eos_token_id, pad_token_id)


# ---- CoCa.generate ----------------------------------------------------------------------------


def _token_id(value: Any, default: int) -> int:
    if value is None:
        return default
    return int(torch.as_tensor(value).reshape(-1)[0])


def _check_arguments(seq_len: int, min_seq_len: int, generation_type: str, top_k: int, top_p: float,
                     num_beams: int, num_beam_groups: int, repetition_penalty: float) -> None:
    if not seq_len > min_seq_len:
        raise AssertionError(
            f"seq_len must be larger than min_seq_len (got seq_len={seq_len}, min_seq_len={min_seq_len})"
        )
    if generation_type not in GENERATION_TYPES:
        raise ValueError(
            f"generation_type has to be one of | {' | '.join(GENERATION_TYPES)} |. (got {generation_type!r})"
        )
    if generation_type == "top_k" and (not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k has to be a strictly positive integer, got {top_k!r}")
    if generation_type == "top_p" and not 0 <= top_p <= 1:
        raise ValueError(f"top_p has to be a float in [0, 1], got {top_p!r}")
    if generation_type == "beam_search" and (num_beam_groups < 1 or num_beams % num_beam_groups):
        raise ValueError(
            f"num_beams ({num_beams}) has to be a positive multiple of num_beam_groups ({num_beam_groups})"
        )
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty has to be a strictly positive float, got {repetition_penalty!r}")


def generate_captions(model, image: torch.Tensor, text: Optional[torch.Tensor] = None, seq_len: int = 30,
                      max_seq_len: int = 77, temperature: float = 1.0, generation_type: str = "beam_search",
                      top_p: float = 0.1, top_k: int = 1, pad_token_id: Optional[int] = None,
                      eos_token_id: Optional[int] = None, sot_token_id: Optional[int] = None,
                      num_beams: int = 6, num_beam_groups: int = 3, min_seq_len: int = 5,
                      stopping_criteria=None, repetition_penalty: float = 1.0,
                      fixed_output_length: bool = False, use_cache: bool = True) -> torch.Tensor:
    """``CoCa.generate`` (see its docstring); ``model`` is a CoCa."""
    _check_arguments(seq_len, min_seq_len, generation_type, top_k, top_p, num_beams, num_beam_groups,
                     repetition_penalty)
    sot = _token_id(sot_token_id, DEFAULT_SOT)
    eos = _token_id(eos_token_id, DEFAULT_EOS)
    pad = _token_id(pad_token_id, model.pad_id)
    criteria = _as_criteria_list(stopping_criteria) or [MaxLengthCriteria(seq_len)]
    incremental = use_cache and supports_kv_cache(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            image_latent, image_embs = model._encode_image(image)
            batch_size = image_embs.shape[0]
            if generation_type == "beam_search":
                # encode each image once, then give every beam its copy
                image_latent = image_latent.repeat_interleave(num_beams, dim=0)
                image_embs = image_embs.repeat_interleave(num_beams, dim=0)
                decoder = _make_decoder(model, image_latent, image_embs, incremental)
                out = beam_search_captions(decoder, batch_size, num_beams, num_beam_groups, sot, eos, pad,
                                           min_seq_len, repetition_penalty, criteria, image_embs.device)
                squeeze = False
            else:
                prompt, squeeze = _prompt(text, batch_size, sot, image_embs.device)
                decoder = _make_decoder(model, image_latent, image_embs, incremental)
                if generation_type == "top_k":
                    filter_fn = lambda s: top_k_filter(s, top_k)  # noqa: E731
                else:
                    filter_fn = lambda s: top_p_filter(s, top_p)  # noqa: E731
                out = sample_captions(decoder, prompt, seq_len, max_seq_len, temperature, filter_fn, min_seq_len,
                                      eos, pad, repetition_penalty, criteria, fixed_output_length, incremental)
    finally:
        model.train(was_training)
    if fixed_output_length and out.shape[1] < seq_len:
        out = F.pad(out, (0, seq_len - out.shape[1]), value=pad)
    return out[0] if squeeze else out


def _make_decoder(model, image_latent: torch.Tensor, image_embs: torch.Tensor, incremental: bool):
    if incremental:
        return CachedDecoder(model, image_embs)
    return FullPrefixDecoder(model, image_latent, image_embs)


def _prompt(text: Optional[torch.Tensor], batch_size: int, sot: int, device) -> tuple[torch.Tensor, bool]:
    """The starting tokens (B, L): ``text`` (1-D → one row, output squeezed back), else SOT."""
    if text is None:
        return torch.full((batch_size, 1), sot, dtype=torch.long, device=device), False
    one_dim = text.dim() == 1
    text = text.to(device=device, dtype=torch.long)
    text = text[None] if one_dim else text
    squeeze = one_dim and batch_size == 1
    if text.shape[0] == 1 and batch_size > 1:
        text = text.expand(batch_size, -1)  # one prompt for every image
    if text.shape[0] != batch_size:
        raise ValueError(f"text prompt has {text.shape[0]} rows for {batch_size} images; use 1 or {batch_size}")
    return text, squeeze
