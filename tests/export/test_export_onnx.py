"""ONNX export: onnxruntime (CPU) equals torch within 1e-4 for every native family, CoCa's
encoders and a timm SigLIP tower; dynamic batch; config and tokenizer files; clear refusals."""

import json
import sys

import numpy as np
import pytest
import torch
from export_models import build, image_inputs, text_inputs

import open_clip
from open_clip.export import ExportError, MissingExtraError, export_onnx_from_source, source_from_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _run(path, name, value):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == name
    assert isinstance(inp.shape[0], str), "batch dimension must be dynamic"
    return out.name, session.run(None, {name: value.numpy()})[0]


def _check_tower(model, path, tower, value):
    with torch.no_grad():
        expected = (model.encode_image(value, normalize=False) if tower == "visual"
                    else model.encode_text(value, normalize=False)).numpy()
    assert np.abs(expected).max() > 1e-2, "features too small to make the comparison meaningful"
    name = "pixel_values" if tower == "visual" else "input_ids"
    for batch in (value[:1], value):  # batch sizes 1 and N, neither the export batch (2)
        out_name, got = _run(path, name, batch)
        assert out_name == ("image_features" if tower == "visual" else "text_features")
        np.testing.assert_allclose(got, expected[: len(batch)], atol=1e-4, rtol=0)
    sequence_axis = ort.InferenceSession(str(path)).get_inputs()[0].shape[-1]
    if tower == "text" and isinstance(sequence_axis, str):
        # causal towers pooled at the end token: padding columns after the last end token may be dropped
        columns = int((value != 0).int().cumsum(1).argmax(1).max()) + 1
        assert columns < value.shape[1]
        np.testing.assert_allclose(_run(path, name, value[:, :columns])[1], expected, atol=1e-4, rtol=0)
    return sequence_axis


@pytest.mark.parametrize("name, towers", [
    ("export-vit-options", ("visual", "text")),   # QuickGELU, rect image, LayerScale, attentional pool
    ("export-custom-text", ("visual", "text")),   # custom blocks, avg pool, bidirectional text, proj bias
    ("export-resnet", ("visual",)),               # ModifiedResNet (its text tower is the plain CLIP one)
    ("export-coca", ("visual", "text")),          # CoCa's encoders (attentional pool, CLS text token)
    ("export-sl-timm", ("visual",)),              # timm SigLIP ViT (its text tower is covered above)
])
def test_onnx_matches_torch(name, towers, tmp_path):
    model, cfg = build(name, tmp_path)
    source = source_from_model(model, cfg, open_clip.get_tokenizer(name), name=name)
    result = export_onnx_from_source(source, tmp_path / "onnx", verify=False, towers=towers)
    assert set(result.files) == {*towers, "config"}
    for tower in towers:
        value = image_inputs(model) if tower == "visual" else text_inputs(model)
        sequence_axis = _check_tower(model, result.files[tower], tower, value)
        if tower == "text":  # only the CLIP text tower (causal, argmax pooling) allows trimming
            assert isinstance(sequence_axis, str) == (name == "export-vit-options"), sequence_axis
    # the eager fast paths are restored after export
    assert getattr(model, "text_early_stop", True) and getattr(model.visual, "last_block_pooled_only", True)

    config = json.loads((tmp_path / "onnx" / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"] == json.loads(json.dumps(cfg["vision_cfg"]))
    assert config["preprocess_cfg"]["mean"] == list(model.visual.preprocess_cfg["mean"])
    onnx_info = config["onnx"]
    assert set(towers) <= set(onnx_info) and onnx_info["normalized"] is False and onnx_info["opset"] >= 17
    assert onnx_info["logit_scale"] == pytest.approx(model.logit_scale.exp().item())
    assert onnx_info["tokenizer"]["file"] == "tokenizer.json"


def test_onnx_verify_fp16_and_tokenizer_note(tmp_path):
    """The built-in check reports the difference; fp16 graphs keep float32 inputs and outputs; a
    tokenizer without a tokenizer.json equivalent is explained in the config."""
    model, cfg = build("export-vit-quickgelu", tmp_path)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=20, clean="canonicalize")
    result = export_onnx_from_source(source_from_model(model, cfg, tokenizer), tmp_path / "fp32", towers=("text",))
    assert result.max_abs_diff["text"] <= 1e-4
    assert result.tokenizer_file is None and "clean='canonicalize'" in result.tokenizer_note
    config = json.loads((tmp_path / "fp32" / "open_clip_config.json").read_text())
    assert "clean='canonicalize'" in config["onnx"]["tokenizer"]["unavailable"]
    assert not (tmp_path / "fp32" / "tokenizer.json").exists()

    half = export_onnx_from_source(source_from_model(model, cfg, None), tmp_path / "fp16", precision="fp16",
                                   towers=("visual",))
    assert 0 < half.max_abs_diff["visual"] <= 0.05  # fp16 rounding, not an exact copy of the fp32 graph
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = ort.InferenceSession(str(half.files["visual"]), options, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "the source model must stay fp32"


def test_unexportable_tower_is_named(tmp_path):
    model, cfg = build("export-vit-quickgelu", tmp_path)

    def no_onnx_op(x):  # ONNX has no singular value decomposition
        return x.flatten(1)[:, :32] * torch.linalg.svdvals(model.visual.proj)[0]

    model.visual.forward = no_onnx_op
    source = source_from_model(model, cfg, None)
    with pytest.raises(ExportError, match=r"visual tower \(VisionTransformer\) cannot be exported to ONNX") as info:
        export_onnx_from_source(source, tmp_path / "onnx", towers=("visual",))
    assert "aten._linalg_svd" in str(info.value)  # the operator at fault, not just "export failed"


def test_bad_arguments_and_missing_extra(tmp_path, monkeypatch):
    model, cfg = build("export-vit-quickgelu", tmp_path)
    source = source_from_model(model, cfg, None)
    with pytest.raises(ExportError, match="precision='int8'"):
        export_onnx_from_source(source, tmp_path / "a", precision="int8")
    with pytest.raises(ExportError, match="towers=.*choose from"):
        export_onnx_from_source(source, tmp_path / "a", towers=("audio",))
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'libreclip\[onnx\]'"):
        export_onnx_from_source(source, tmp_path / "b")
