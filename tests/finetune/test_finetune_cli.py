"""``open_clip_train.finetune`` end to end on solid-colour folders with a tiny CLIP (CPU, fp32)."""

import json
import logging

import pytest
import torch
from finetune_fixtures import FOLDERS, base_args
from safetensors.torch import load_file

from open_clip_train.classifier_head import load_head
from open_clip_train.finetune import cli, main, run
from open_clip_train.main import main as train_main


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory, colour_data, tiny_clip):
    """From random 'zero-shot' weights: the colours must be learnt by fine-tuning itself."""
    out = tmp_path_factory.mktemp("ft")
    results = run(base_args(colour_data, tiny_clip, out, "--epochs", "5", "--lr", "1e-3",
                            "--wise-ft-alphas", "0", "0.5", "1"))
    return out, results


def test_small_run_learns_solid_colours(finetuned_run):
    out, results = finetuned_run
    assert results == json.loads((out / "results.json").read_text())
    assert results["alpha"] == [0.0, 0.5, 1.0] and list(results["ood_acc"]) == ["dark"]
    assert results["val_acc"][-1] >= 0.9, results
    for name in ("finetuned.safetensors", "head.safetensors", "wise_ft.png", "out.log", "wise_ft_alpha_0.safetensors",
                 "wise_ft_alpha_0.5.safetensors", "wise_ft_alpha_1.safetensors"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp"))


def test_checkpoints_are_open_clip_checkpoints(finetuned_run, tiny_clip):
    from open_clip.factory import create_model

    out, _ = finetuned_run
    zeroshot, finetuned = load_file(tiny_clip["checkpoint"]), load_file(out / "finetuned.safetensors")
    assert set(finetuned) == set(zeroshot)
    assert torch.equal(load_file(out / "wise_ft_alpha_1.safetensors")["visual.proj"], finetuned["visual.proj"])
    assert all(torch.equal(load_file(out / "wise_ft_alpha_0.safetensors")[k], v) for k, v in zeroshot.items())
    # only the image tower was trained
    assert not torch.equal(finetuned["visual.conv1.weight"], zeroshot["visual.conv1.weight"])
    assert all(torch.equal(finetuned[k], v) for k, v in zeroshot.items() if not k.startswith("visual."))
    # usable as pretrained weights, and with the head they classify as results.json says
    model = create_model(tiny_clip["registered"], pretrained=str(out / "wise_ft_alpha_1.safetensors")).eval()
    head, classnames = load_head(str(out / "head.safetensors"), alpha=1.0)
    assert classnames == list(FOLDERS.values())
    assert set(load_file(out / "head.safetensors")) == {"weight", "bias", "zeroshot.weight", "zeroshot.bias"}
    assert model is not None and head.weight.shape == (4, 32)


def _zero_shot_accuracy(model_name, checkpoint, folder, data):
    """Zero-shot accuracy computed independently with the public API."""
    from torchvision.datasets import ImageFolder

    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=checkpoint)
    model.eval()
    templates = [t for t in open(data["templates"]).read().splitlines() if t]
    with torch.no_grad():
        classifier = build_zero_shot_classifier(model, open_clip.get_tokenizer(model_name),
                                                list(FOLDERS.values()), templates)
        dataset = ImageFolder(folder, transform=preprocess)
        images = torch.stack([x for x, _ in dataset])
        labels = torch.tensor([y for _, y in dataset])
        preds = (model.encode_image(images, normalize=True) @ classifier).argmax(dim=-1)
    return (preds == labels).float().mean().item(), classifier, model.logit_scale.exp().item()


@pytest.fixture(scope="module")
def flyp_checkpoint(tmp_path_factory, colour_data, tiny_clip):
    """A 'pretrained' tiny CLIP: contrastive training on the colour folders (--dataset-type imagefolder)
    with layer-wise and per-tower learning rates, through the training app."""
    logs = tmp_path_factory.mktemp("flyp_logs")
    args = ["--model", tiny_clip["registered"], "--pretrained", tiny_clip["checkpoint"], "--dataset-type",
            "imagefolder", "--train-data", colour_data["train"], "--classnames", colour_data["classnames"],
            "--templates", colour_data["templates"], "--batch-size", "16", "--workers", "0", "--epochs", "8",
            "--lr", "3e-3", "--lr-text", "1e-2", "--layer-decay", "0.8", "--warmup", "4", "--precision", "fp32",
            "--device", "cpu", "--logs", str(logs), "--name", "flyp", "--seed", "0", "--save-frequency", "8"]
    assert train_main(args) is None
    return logs / "flyp" / "checkpoints" / "epoch_8.pt"


def test_flyp_run_uses_layer_decay_groups(flyp_checkpoint):
    groups = torch.load(flyp_checkpoint, weights_only=True)["optimizer"]["param_groups"]
    # image tower: 0.8^(3 - depth); text tower ten times the image LR; logit_scale at the base LR
    scales = sorted({round(g["lr_scale"], 6) for g in groups})
    assert scales == sorted({round(s * f, 6) for s in (0.512, 0.64, 0.8, 1.0) for f in (1.0, 10 / 3)} | {1.0})


def test_head_at_step_zero_is_the_zero_shot_classifier(tmp_path, colour_data, tiny_clip, flyp_checkpoint):
    results = run(base_args(colour_data, tiny_clip, tmp_path, "--model", tiny_clip["registered"], "--pretrained",
                            str(flyp_checkpoint), "--epochs", "1", "--lr", "1e-3", "--wise-ft-alphas", "0"))
    val_acc, classifier, scale = _zero_shot_accuracy(tiny_clip["registered"], str(flyp_checkpoint),
                                                     colour_data["val"], colour_data)
    ood_acc, _, _ = _zero_shot_accuracy(tiny_clip["registered"], str(flyp_checkpoint), colour_data["ood"], colour_data)
    assert val_acc > 0.5  # the contrastive pre-training learnt something: the comparison is not trivial
    assert results["val_acc"] == [val_acc] and results["ood_acc"]["dark"] == [ood_acc]
    head = load_file(tmp_path / "head.safetensors")
    torch.testing.assert_close(head["zeroshot.weight"], scale * classifier.T, rtol=1e-6, atol=1e-6)
    assert torch.equal(head["zeroshot.bias"], torch.zeros(4))


@pytest.mark.parametrize("change,message", [
    (("--train-data", "/nonexistent/train"), "--train-data /nonexistent/train: directory not found"),
    (("--wise-ft-alphas", "0", "0"), "--wise-ft-alphas 0 0: a value is repeated"),
    (("--epochs", "0"), "--epochs 0: must be >= 1"),
    (("--torchscript",), "--torchscript: not supported"),
])
def test_bad_input_gives_one_line_error(tmp_path, colour_data, tiny_clip, caplog, change, message):
    with caplog.at_level(logging.ERROR):
        assert main(base_args(colour_data, tiny_clip, tmp_path / "out", *change)) == -1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], errors


def test_bad_files_give_exit_code_2(tmp_path, colour_data, tiny_clip):
    (tmp_path / "t.txt").write_text("no placeholder here\n")
    (tmp_path / "c.tsv").write_text("c0_red\tred\n")
    (tmp_path / "val" / "c9_purple").mkdir(parents=True)
    (tmp_path / "val" / "c9_purple" / "x.png").write_bytes(b"")
    assert cli(base_args(colour_data, tiny_clip, tmp_path / "o", "--templates", str(tmp_path / "t.txt"))) == 2
    assert cli(base_args(colour_data, tiny_clip, tmp_path / "o", "--classnames", str(tmp_path / "c.tsv"))) == 2
    assert cli(base_args(colour_data, tiny_clip, tmp_path / "o", "--val-data", str(tmp_path / "val"))) == 2
