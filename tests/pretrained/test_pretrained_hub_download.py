"""Hub downloads through the real huggingface_hub client against a cache the test fills."""

import json
import os

import pytest
import torch
from hub_cache import fill_hub_cache
from safetensors.torch import save_file

from open_clip import pretrained
from open_clip.pretrained import download_pretrained, download_pretrained_from_hf, get_pretrained_cfg
from open_clip.pretrained_cache import CorruptCacheError, safetensors_file_ok

OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _tensors():
    return {"w": torch.arange(6.0).reshape(2, 3)}


def test_safetensors_preferred_over_bin(tmp_path, offline):
    snap = fill_hub_cache(
        tmp_path,
        "org/repo",
        {"open_clip_model.safetensors": _tensors(), "open_clip_pytorch_model.bin": b"pickle"},
    )
    path = download_pretrained_from_hf("org/repo", cache_dir=str(tmp_path))
    assert os.path.samefile(path, snap / "open_clip_model.safetensors")


def test_bin_used_when_no_safetensors(tmp_path, offline):
    snap = fill_hub_cache(tmp_path, "org/repo", {"open_clip_pytorch_model.bin": b"pickle"})
    path = download_pretrained_from_hf("org/repo", cache_dir=str(tmp_path))
    assert os.path.samefile(path, snap / "open_clip_pytorch_model.bin")


def test_named_bin_prefers_safetensors_sibling(tmp_path, offline):
    snap = fill_hub_cache(tmp_path, "org/vitamin", {"pytorch_model.bin": b"x", "pytorch_model.safetensors": _tensors()})
    path = download_pretrained_from_hf("org/vitamin", filename="pytorch_model.bin", cache_dir=str(tmp_path))
    assert os.path.samefile(path, snap / "pytorch_model.safetensors")


def test_config_file_by_name(tmp_path, offline):
    cfg = {"model_cfg": {"embed_dim": 8}, "preprocess_cfg": {"mean": [0.1, 0.2, 0.3]}}
    snap = fill_hub_cache(tmp_path, "org/repo", {"open_clip_config.json": json.dumps(cfg).encode()})
    path = download_pretrained_from_hf("org/repo", filename="open_clip_config.json", cache_dir=str(tmp_path))
    assert os.path.samefile(path, snap / "open_clip_config.json")


def test_revision_suffix_and_argument(tmp_path, offline):
    fill_hub_cache(tmp_path, "org/repo", {"open_clip_pytorch_model.bin": b"main"})
    fill_hub_cache(tmp_path, "org/repo", {"open_clip_pytorch_model.bin": b"v1"}, commit=OTHER_COMMIT, ref="v1")
    read = lambda p: open(p, "rb").read()  # noqa: E731
    assert read(download_pretrained_from_hf("org/repo", cache_dir=str(tmp_path))) == b"main"
    assert read(download_pretrained_from_hf("org/repo@v1", cache_dir=str(tmp_path))) == b"v1"
    assert read(download_pretrained_from_hf("org/repo", revision="v1", cache_dir=str(tmp_path))) == b"v1"
    assert read(download_pretrained_from_hf(f"org/repo@{OTHER_COMMIT}", cache_dir=str(tmp_path))) == b"v1"
    with pytest.raises(ValueError, match="revision"):
        download_pretrained_from_hf("org/repo@v1", revision="v2", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Malformed"):
        download_pretrained_from_hf("org/repo@", cache_dir=str(tmp_path))


def test_offline_and_not_cached_is_one_clear_line(tmp_path, offline):
    with pytest.raises(FileNotFoundError) as info:
        download_pretrained_from_hf("org/missing", cache_dir=str(tmp_path))
    msg = str(info.value)
    assert msg.startswith("Failed to download file (open_clip_pytorch_model.bin) for org/missing.")
    assert "\n" not in msg
    assert "open_clip_model.safetensors" in msg and str(tmp_path) in msg and "HF_HUB_OFFLINE" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_hf_home_and_hub_cache_env_read_at_call_time(tmp_path, offline, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snap = fill_hub_cache(tmp_path / "home" / "hub", "org/repo", {"open_clip_pytorch_model.bin": b"a"})
    assert os.path.samefile(download_pretrained_from_hf("org/repo"), snap / "open_clip_pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hc"))
    snap = fill_hub_cache(tmp_path / "hc", "org/repo", {"open_clip_pytorch_model.bin": b"b"})
    assert os.path.samefile(download_pretrained_from_hf("org/repo"), snap / "open_clip_pytorch_model.bin")


def test_corrupt_cached_safetensors_offline_is_an_error(tmp_path, offline):
    fill_hub_cache(tmp_path, "org/repo", {"open_clip_model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc"})
    with pytest.raises(CorruptCacheError, match="not a valid safetensors file"):
        download_pretrained_from_hf("org/repo", cache_dir=str(tmp_path))


def test_corrupt_cached_safetensors_online_is_downloaded_again(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    snap = fill_hub_cache(tmp_path, "org/repo", {"open_clip_model.safetensors": b"garbage"})
    calls = []

    def fake_download(repo_id, filename, force_download=False, **kwargs):
        calls.append((repo_id, filename, force_download, kwargs["local_files_only"]))
        if force_download:  # what the client does online: fetch the file again
            save_file(_tensors(), str(snap / filename))
        return str(snap / filename)

    monkeypatch.setattr(pretrained, "hf_hub_download", fake_download)
    path = download_pretrained_from_hf("org/repo", cache_dir=str(tmp_path))
    assert safetensors_file_ok(path)
    assert calls == [("org/repo", "open_clip_model.safetensors", False, False)] + [
        ("org/repo", "open_clip_model.safetensors", True, False)
    ]


def test_safetensors_header_check(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(_tensors(), str(good))
    assert safetensors_file_ok(str(good))
    data = good.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-3])
    (tmp_path / "long.safetensors").write_bytes(data + b"xx")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ["short", "long", "empty"]:
        assert not safetensors_file_ok(str(tmp_path / f"{name}.safetensors")), name


def test_download_pretrained_for_a_registry_tag(tmp_path, offline):
    rec = get_pretrained_cfg("RN50", "openai")  # hf_hub 'timm/resnet50_clip.openai/'
    snap = fill_hub_cache(tmp_path, "timm/resnet50_clip.openai", {"open_clip_model.safetensors": _tensors()})
    path = download_pretrained(rec, cache_dir=str(tmp_path))
    assert os.path.samefile(path, snap / "open_clip_model.safetensors")


def test_library_identifies_itself(tmp_path, monkeypatch):
    seen = {}

    def fake_download(repo_id, filename, **kwargs):
        seen.update(kwargs)
        return "x"

    monkeypatch.setattr(pretrained, "_has_safetensors", False)
    monkeypatch.setattr(pretrained, "hf_hub_download", fake_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert download_pretrained_from_hf("org/repo", cache_dir=str(tmp_path)) == "x"
    assert seen["library_name"] == "open_clip" and seen["library_version"] == "3.3.0"
    assert seen["local_files_only"] is False
