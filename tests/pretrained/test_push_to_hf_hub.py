"""Publishing: config file, saved folder, model card, Hub calls (faked) and the command line."""

import importlib
import json
import runpy
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

push_mod = importlib.import_module("open_clip.push_to_hf_hub")


class _TinyModel(nn.Module):
    """Just enough of a CLIP for publishing: weights and a visual tower with preprocess attrs."""

    def __init__(self, preprocess_cfg=None):
        super().__init__()
        self.visual = nn.Linear(3, 2)
        self.text_projection = nn.Parameter(torch.randn(4, 2))
        self.visual.image_mean = (0.1, 0.2, 0.3)
        self.visual.image_std = (0.4, 0.5, 0.6)
        if preprocess_cfg is not None:
            self.visual.preprocess_cfg = preprocess_cfg


class _Tokenizer:
    def save_pretrained(self, directory):
        (directory / "tokenizer.json").write_text("{}")


MODEL_CFG = {"embed_dim": 2, "vision_cfg": {"width": 3}, "text_cfg": {"width": 4}}


def test_save_config_for_hf(tmp_path):
    model = _TinyModel({"size": 224, "interpolation": "bilinear", "resize_mode": "squash", "fill_color": 0})
    push_mod.save_config_for_hf(model, tmp_path / "c.json", MODEL_CFG)
    cfg = json.loads((tmp_path / "c.json").read_text())
    assert cfg == {
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": {
            "mean": [0.1, 0.2, 0.3],
            "std": [0.4, 0.5, 0.6],
            "interpolation": "bilinear",
            "resize_mode": "squash",
        },
    }
    push_mod.save_config_for_hf(_TinyModel(), str(tmp_path / "d.json"), None)  # str path, no cfg
    assert json.loads((tmp_path / "d.json").read_text()) == {
        "model_cfg": None,
        "preprocess_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]},
    }
    assert (tmp_path / "c.json").read_text().startswith('{\n  "model_cfg"')  # indent=2


@pytest.mark.parametrize(
    "mode, files",
    [
        ("both", {"open_clip_model.safetensors", "open_clip_pytorch_model.bin"}),
        (True, {"open_clip_model.safetensors"}),
        (False, {"open_clip_pytorch_model.bin"}),
        ("neither", set()),
    ],
)
def test_save_for_hf_weight_files(tmp_path, mode, files):
    model = _TinyModel()
    out = tmp_path / "a" / "b"  # parents are created
    push_mod.save_for_hf(model, _Tokenizer(), MODEL_CFG, out, safe_serialization=mode)
    assert {p.name for p in out.iterdir()} == files | {"tokenizer.json", "open_clip_config.json"}
    expected = model.state_dict()
    if "open_clip_model.safetensors" in files:
        got = load_file(str(out / "open_clip_model.safetensors"))
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    if "open_clip_pytorch_model.bin" in files:
        got = torch.load(out / "open_clip_pytorch_model.bin", weights_only=True)
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_save_for_hf_skip_weights_and_plain_tokenizer(tmp_path):
    push_mod.save_for_hf(_TinyModel(), object(), MODEL_CFG, tmp_path, skip_weights=True)
    assert {p.name for p in tmp_path.iterdir()} == {"open_clip_config.json"}


def test_generate_readme_minimal():
    assert push_mod.generate_readme({}, "x") == (
        "---\n"
        "tags:\n"
        "- clip\n"
        "library_name: open_clip\n"
        "pipeline_tag: zero-shot-image-classification\n"
        "license: mit\n"
        "---\n"
        "# Model card for x\n"
    )


def test_generate_readme_full_card():
    card = {
        "tags": ["clip", "laion"],
        "pipeline_tag": "feature-extraction",
        "license": "apache-2.0",
        "description": "A small model.",
        "details": {"Dataset": "LAION-2B", "Papers": ["a", "b"], "Sizes": {"params": 3}},
        "usage": "use it",
        "comparison": "better",
        "citation": ["@a{1}", "@b{2}"],
    }
    text = push_mod.generate_readme(card, "m")
    assert "tags" not in card and "pipeline_tag" not in card  # popped, as in 3.3
    lines = text.splitlines()
    assert lines[:11] == [
        "---",
        "tags:",
        "- clip",
        "- laion",
        "library_name: open_clip",
        "pipeline_tag: feature-extraction",
        "license: apache-2.0",
        "datasets:",
        "- laion-2b",
        "---",
        "# Model card for m",
    ]
    body = "\n".join(lines[11:])
    for piece in [
        "A small model.",
        "## Model Details\n- **Dataset:** LAION-2B\n- **Papers:**\n  - a\n  - b\n- **Sizes:**\n  - params: 3",
        "## Model Usage\nuse it",
        "## Model Comparison\nbetter",
        "## Citation\n```bibtex\n@a{1}\n```\n```bibtex\n@b{2}\n```",
    ]:
        assert piece in body, piece
    order = [body.index(s) for s in ["A small", "## Model Details", "## Model Usage", "## Model Comp", "## Citation"]]
    assert order == sorted(order)
    assert push_mod.generate_readme({"tags": []}, "m").startswith("---\nlibrary_name: open_clip\n")


class _FakeHub:
    def __init__(self, readme_exists=False):
        self.calls = []
        self.readme_exists = readme_exists
        self.uploaded = {}

    def create_repo(self, repo_id, token=None, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, token, private, exist_ok))
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/owner/{repo_id.split('/')[-1]}")

    def file_exists(self, repo_id, filename, revision=None, token=None):
        self.calls.append(("file_exists", repo_id, filename, revision, token))
        return self.readme_exists

    def upload_folder(self, repo_id, folder_path, revision, create_pr, commit_message, token):
        self.calls.append(("upload_folder", repo_id, revision, create_pr, commit_message, token))
        from pathlib import Path

        self.uploaded = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return "commit-info"


@pytest.mark.parametrize("readme_exists", [False, True])
def test_push_to_hf_hub_forwards_token_and_uploads_folder(monkeypatch, readme_exists):
    hub = _FakeHub(readme_exists)
    for name in ("create_repo", "file_exists", "upload_folder"):
        monkeypatch.setattr(push_mod, name, getattr(hub, name))
    monkeypatch.setattr(push_mod, "_hub_tokenizer", lambda tok: tok)  # the real one needs the network
    result = push_mod.push_to_hf_hub(
        _TinyModel(), _Tokenizer(), MODEL_CFG, "name", token="tok", revision="dev", private=True,
        create_pr=True, commit_message="msg", model_card={"description": "d"}, safe_serialization=True,
    )  # fmt: skip
    assert result == "commit-info"
    assert hub.calls == [
        ("create_repo", "name", "tok", True, True),
        ("file_exists", "owner/name", "README.md", "dev", "tok"),
        ("upload_folder", "owner/name", "dev", True, "msg", "tok"),
    ]
    expected = {"open_clip_model.safetensors", "open_clip_config.json", "tokenizer.json"}
    if not readme_exists:
        expected.add("README.md")
        assert hub.uploaded["README.md"].decode().startswith("---\ntags:\n- clip\n")
        assert "# Model card for name\n\nd\n" in hub.uploaded["README.md"].decode()
    assert set(hub.uploaded) == expected


def test_builtin_tokenizer_is_published_as_openai_hf_tokenizer(monkeypatch):
    made = []

    class FakeHF:
        def __init__(self, name, *args, **kwargs):
            made.append(name)

    monkeypatch.setattr(push_mod, "HFTokenizer", FakeHF)  # a module global, as in 3.3
    assert isinstance(push_mod._hub_tokenizer(object()), FakeHF)
    assert made == ["openai/clip-vit-large-patch14"]
    keep = FakeHF("mine")
    assert push_mod._hub_tokenizer(keep) is keep


def test_command_line(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(push_mod, "push_pretrained_to_hf_hub", lambda *a, **k: seen.update(args=a, kwargs=k))
    push_mod.main(
        ["--model", "ViT-B-32", "--pretrained", "openai", "--repo-id", "o/r", "--image-mean", "0.1", "0.2", "0.3",
         "--image-interpolation", "bilinear", "--hf-tokenizer-self"]
    )  # fmt: skip
    assert seen["args"] == ("ViT-B-32", "openai", "o/r")
    assert seen["kwargs"] == dict(
        precision="fp32", image_mean=[0.1, 0.2, 0.3], image_std=None, image_interpolation="bilinear",
        image_resize_mode=None, hf_tokenizer_self=True,
    )  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out == ["Saving model ViT-B-32 with pretrained weights openai to Hugging Face Hub at o/r", "ViT-B-32 saved."]
    with pytest.raises(SystemExit):
        push_mod.main(["--image-resize-mode", "crop"])
    with pytest.raises(SystemExit):
        push_mod.main(["--hf-tokenizer-name", "x"])  # the flag 3.3's README mentions does not exist


def test_module_stays_reachable():
    assert sys.modules["open_clip.push_to_hf_hub"] is push_mod
    assert callable(push_mod.push_to_hf_hub)


@pytest.mark.filterwarnings("ignore:'open_clip.push_to_hf_hub' found in sys.modules:RuntimeWarning")
def test_python_dash_m_runs_the_command_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["push_to_hf_hub", "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("open_clip.push_to_hf_hub", run_name="__main__")
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--model", "--pretrained", "--repo-id", "--precision", "--image-mean", "--image-std",
                 "--image-interpolation", "--image-resize-mode", "--hf-tokenizer-self"]:  # fmt: skip
        assert flag in text, flag
    for absent in ["--token", "--private", "--revision", "--hf-tokenizer-name"]:
        assert absent not in text, absent
