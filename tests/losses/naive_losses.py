"""Naive O(N^2) loss references for the loss tests: explicit Python loops over (row, column) pairs.

Written from the definitions in the spec (CLIP: mean cross-entropy of each row of
`s * <a_i, c_j> + b` with the positive at column `offset + i`; SigLIP: `-sum logsigmoid(y * z)`
divided by the row count). Slow on purpose; use on a few rows only.
"""

import math

import torch


def pair_logit(a, c, scale, bias=None):
    z = scale * (a * c).sum()
    return z if bias is None else z + bias


def row_cross_entropy(rows, cols, scale, bias=None, offset=0):
    """Mean over rows i of log(sum_j exp(z_ij)) - z_i,offset+i."""
    total = 0.0
    for i in range(rows.shape[0]):
        logits = [pair_logit(rows[i], cols[j], scale, bias) for j in range(cols.shape[0])]
        peak = max(float(z.detach()) for z in logits)
        sum_exp = sum(torch.exp(z - peak) for z in logits)
        total = total + (peak + torch.log(sum_exp)) - logits[offset + i]
    return total / rows.shape[0]


def clip_global(image, text, scale, bias=None):
    """ClipLoss on one process: image-to-text and text-to-image cross-entropy, averaged."""
    return (row_cross_entropy(image, text, scale, bias) + row_cross_entropy(text, image, scale, bias)) / 2


def clip_local(image_rows, text_rows, all_image, all_text, scale, offset, bias=None):
    """ClipLoss with local_loss: this rank's rows against every rank's columns."""
    return (
        row_cross_entropy(image_rows, all_text, scale, bias, offset)
        + row_cross_entropy(text_rows, all_image, scale, bias, offset)
    ) / 2


def log_sigmoid(x):
    # Stable for both signs: log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|)).
    return torch.clamp(x, max=0) - torch.log1p(torch.exp(-x.abs()))


def siglip(image_rows, all_text, scale, bias=None, offset=0):
    """-sum_ij logsigmoid(y_ij z_ij) / len(image_rows), y = +1 only at column offset + i."""
    total = 0.0
    for i in range(image_rows.shape[0]):
        for j in range(all_text.shape[0]):
            sign = 1.0 if j == offset + i else -1.0
            total = total - log_sigmoid(sign * pair_logit(image_rows[i], all_text[j], scale, bias))
    return total / image_rows.shape[0]


def distill(student_rows, teacher_rows):
    """Mean over rows of -sum_j softmax(teacher)_ij log_softmax(student)_ij, with explicit loops."""
    total = 0.0
    for t_row, s_row in zip(teacher_rows, student_rows):
        t_max, s_max = max(float(t.detach()) for t in t_row), max(float(s.detach()) for s in s_row)
        t_norm = sum(torch.exp(t - t_max) for t in t_row)
        s_lse = s_max + torch.log(sum(torch.exp(s - s_max) for s in s_row))
        total = total - sum(torch.exp(t - t_max) / t_norm * (s - s_lse) for t, s in zip(t_row, s_row))
    return total / len(student_rows)


def caption_cross_entropy(logits, labels, pad_id):
    """Mean cross-entropy over non-pad positions of (B, L, V) logits; NaN when all are pad."""
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            label = int(labels[b, t])
            if label == pad_id:
                continue
            row = logits[b, t]
            peak = float(row.detach().max())
            total = total + peak + torch.log(sum(torch.exp(v - peak) for v in row)) - row[label]
            count += 1
    return total / count if count else torch.tensor(math.nan)
