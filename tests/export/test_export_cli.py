"""`python -m open_clip.export`: the four sub-commands, their output and their error lines."""

import json
import subprocess
import sys

import pytest
from export_models import build, save_weights

from open_clip.export import save_model_folder, source_from_model
from open_clip.export.cli import main


def test_folder_then_onnx_from_the_folder(tmp_path, capsys):
    model, _ = build("export-vit-quickgelu", tmp_path)
    weights = save_weights(model, tmp_path / "w.safetensors")
    folder = tmp_path / "folder"
    assert main(["folder", "--model", "export-vit-quickgelu", "--pretrained", weights, "--output", str(folder)]) == 0
    assert "load it as 'local-dir:" in capsys.readouterr().out
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["model_cfg"]["quick_gelu"] is True

    pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    assert main(["onnx", "--model", f"local-dir:{folder}", "--output", str(out), "--towers", "text"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'text.onnx'}" in printed and "tokenizer.json" in printed
    assert "onnxruntime vs torch max abs difference: {'text'" in printed
    assert not (out / "visual.onnx").exists()


def test_refusals_are_one_error_line(tmp_path, capsys):
    pytest.importorskip("transformers")
    model, _ = build("export-resnet", tmp_path)
    weights = save_weights(model, tmp_path / "w.safetensors")
    assert main(["hf", "--model", "export-resnet", "--pretrained", weights, "--output", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: transformers.CLIPModel cannot represent this model: the ModifiedResNet")
    assert "Traceback" not in err
    assert main(["from-hf", "--input", "libreclip-tests/not-cached", "--output", str(tmp_path / "x")]) == 2
    assert "local Hugging Face cache" in capsys.readouterr().err
    assert main(["folder", "--model", "no-such-model", "--output", str(tmp_path / "y")]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    model, cfg = build("export-vit-quickgelu", tmp_path)
    folder = save_model_folder(source_from_model(model, cfg, None), tmp_path / "folder")
    run = subprocess.run([sys.executable, "-m", "open_clip.export", "folder", "--model", f"local-dir:{folder}",
                          "--output", str(tmp_path / "copy")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "copy" / "open_clip_model.safetensors").is_file()
