"""What a fine-tuning run writes besides weights: ``results.json`` and the ``wise_ft.png`` curve.

``results.json`` is ``{"alpha": [...], "val_acc": [...], "ood_acc": {"<ood folder name>": [...]}}`` with
accuracies as fractions, one per alpha in the order given. Both files are written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

from .weights_io import atomic_write


def ood_names(paths: Sequence[str]) -> list[str]:
    """Result keys of the OOD folders: their folder names, which must be distinct."""
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    for name in names:
        if names.count(name) > 1:
            dupes = [p for p, n in zip(paths, names) if n == name]
            raise ValueError(f"--ood-data {' '.join(dupes)}: folders share the name {name!r}, which keys the "
                             "results; rename or link one of them under another name.")
    return names


def results_dict(alphas: Sequence[float], val_acc: Sequence[float], ood_acc: dict[str, list[float]]) -> dict:
    return {"alpha": list(alphas), "val_acc": list(val_acc), "ood_acc": {k: list(v) for k, v in ood_acc.items()}}


def write_results(results: dict, path: str) -> None:
    """``results.json`` (atomic)."""
    text = json.dumps(results, indent=2) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def plot_wise_ft(results: dict, path: str, title: str = "WiSE-FT: accuracy vs mixing weight") -> bool:
    """Accuracy against alpha for the ID set and each OOD set; False (and a warning) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        logging.warning(f"matplotlib is not installed: skipping {path} (pip install matplotlib).")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(results["alpha"])), key=lambda i: results["alpha"][i])
    alphas = [results["alpha"][i] for i in order]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(alphas, [results["val_acc"][i] for i in order], marker="o", linewidth=2, label="in-distribution (val)")
    for name, accs in results["ood_acc"].items():
        ax.plot(alphas, [accs[i] for i in order], marker="s", linestyle="--", label=f"OOD: {name}")
    ax.set_xlabel("alpha (0 = zero-shot, 1 = fine-tuned)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return True
