"""The demo's report: a Markdown summary with a loss curve, a confusion matrix and retrieved examples."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .evaluate import TASKS, TaskResult
from .scenes import chance_levels

LOSS_PATTERN = re.compile(r"Loss:\s*([0-9.]+)|loss[=:]\s*([0-9.]+)", re.IGNORECASE)
STEP_PATTERN = re.compile(r"step[= ]\s*(\d+)", re.IGNORECASE)


def parse_losses(log_text: str) -> list[float]:
    """Training losses in the order the training app logged them."""
    losses = []
    for line in log_text.splitlines():
        if "Train" not in line and "train" not in line:
            continue
        match = LOSS_PATTERN.search(line)
        if match:
            losses.append(float(match.group(1) or match.group(2)))
    return losses


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # the demo extra carries it
        raise ImportError("the demo report needs matplotlib: pip install 'libreclip[demo]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(losses: list[float], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(len(losses)), losses)
    ax.set_xlabel("logged step")
    ax.set_ylabel("contrastive loss")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(result: TaskResult, title: str, path: Path) -> None:
    plt = _pyplot()
    n = len(result.class_names)
    matrix = np.zeros((n, n), dtype=int)
    for label, pred in zip(result.labels, result.predictions):
        matrix[label, pred] += 1
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), result.class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), result.class_names)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_retrieved(queries: list[str], images_per_query: list[list], path: Path) -> None:
    plt = _pyplot()
    rows, cols = len(queries), max(len(r) for r in images_per_query)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for r, (query, images) in enumerate(zip(queries, images_per_query)):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c])
        axes[r][0].set_title(query, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def accuracy_table(results: dict[tuple[str, bool], TaskResult]) -> str:
    chance = chance_levels()
    lines = ["| attribute | chance | seen combinations | held-out combinations | held-out / chance |",
             "|---|---|---|---|---|"]
    for task in TASKS:
        seen, held = results[(task, False)].accuracy, results[(task, True)].accuracy
        lines.append(f"| {task} | {chance[task]:.3f} | {seen:.3f} | {held:.3f} | {held / chance[task]:.2f}x |")
    return "\n".join(lines)


def write_report(out_dir: Path, settings: dict, results, retrieval: dict, losses: list[float],
                 timings: dict[str, float], reload_line: str, sections: str = "") -> Path:
    """Write report.md next to its figures (``sections``: extra Markdown placed before the timings)."""
    retrieval_rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in retrieval.items())
    timing_rows = "\n".join(f"| {k} | {v:.1f} s |" for k, v in timings.items())
    settings_rows = "\n".join(f"| {k} | {v} |" for k, v in settings.items())
    text = f"""# libreclip demo report

A small CLIP trained from scratch on procedurally drawn scenes of coloured shapes, through the real
training CLI (`python -m open_clip_train.main`), then evaluated with the public `open_clip` API.
Some (colour, shape) pairs never appear in training; "held-out" rows measure compositional
generalisation to them. Chance is one over the number of alternatives each prompt set offers.

## Zero-shot accuracy
{accuracy_table(results)}

![confusion matrix: colour on held-out pairs](confusion_colour_heldout.png)

## Retrieval (seen combinations, one caption per image)
| metric | value |
|---|---|
{retrieval_rows}

![retrieved examples](retrieved.png)

## Training
![loss curve](loss_curve.png)

| setting | value |
|---|---|
{settings_rows}

{sections}
## Time
| phase | time |
|---|---|
{timing_rows}

## Reloaded checkpoint
{reload_line}
"""
    path = out_dir / "report.md"
    path.write_text(text)
    return path
