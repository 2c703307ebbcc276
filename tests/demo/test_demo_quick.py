"""The embedded main job in its quick mode: the same path as `make demo`, on fewer steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_quick_demo_trains_reports_and_reloads(tmp_path):
    env = dict(os.environ, DEMO_QUICK="1", DEMO_OUT=str(tmp_path / "out"), PYTHONUNBUFFERED="1")
    run = subprocess.run([sys.executable, "-m", "demo"], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    for figure in ("loss_curve.png", "confusion_colour_heldout.png", "retrieved.png", "wise_ft.png"):
        assert (out / figure).stat().st_size > 0
        assert figure in report
    metrics = json.loads((out / "metrics.json").read_text())
    # colour on colour-shape pairs never seen in training; chance is 1/5
    assert metrics["zero_shot"]["colour/held_out"] >= 1.5 * 0.2, metrics
    # the fine-tuning stage ran the fine-tuning CLI and reports the WiSE-FT curve
    wise = metrics["wise_ft"]
    assert wise["alpha"] == [0.0, 0.5, 1.0] and set(wise["ood_acc"]) == {"plain", "noisy"}, wise
    assert len(wise["val_acc"]) == 3 and "alpha 1" in report.split("## Fine-tuning without losing robustness")[1]
    assert "classified an unseen-combination image" in run.stdout
