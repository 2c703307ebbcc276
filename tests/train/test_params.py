"""Command-line flags: 3.3 names, types, defaults and the model-dependent optimizer defaults."""

import argparse
import subprocess
import sys

import pytest

from open_clip_train.params import get_default_params, parse_args


def test_defaults_match_33():
    a = parse_args([])
    assert a.model == "RN50"
    assert (a.lr, a.beta1, a.beta2, a.eps) == (5e-4, 0.9, 0.999, 1e-8)
    assert a.precision == "amp" and a.wd == 0.2 and a.warmup == 10000
    assert a.batch_size == 64 and a.workers == 4 and a.logs == "./logs/"
    assert a.aug_cfg == {} and a.epochs == 32 and a.seed == 0
    assert a.dataset_type == "auto" and a.csv_separator == "\t"
    assert a.csv_img_key == "filepath" and a.csv_caption_key == "title"
    assert a.save_frequency == 1 and a.zeroshot_frequency == 2 and a.val_frequency == 1
    assert a.lr_scheduler == "cosine" and a.lr_cooldown_end == 0.0 and a.lr_cooldown_power == 1.0
    assert a.coca_caption_loss_weight == 2.0 and a.coca_contrastive_loss_weight == 1.0
    assert a.remote_sync_protocol == "s3" and a.remote_sync_frequency == 300
    assert a.report_to == "" and a.wandb_project_name == "open-clip" and a.log_every_n_steps == 100
    assert a.device == "cuda" and a.opt == "adamw" and a.accum_freq == 1
    assert a.pretrained == "" and a.resume is None and a.name is None


def test_new_flags_defaults():
    a = parse_args([])
    assert a.save_every_n_steps == 0
    assert a.max_nonfinite_steps == 10
    assert a.loss_chunk_size is None
    assert a.data_max_bad_fraction == 0.1
    b = parse_args(["--save-every-n-steps", "5", "--loss-chunk-size", "128", "--max-nonfinite-steps", "3"])
    assert (b.save_every_n_steps, b.loss_chunk_size, b.max_nonfinite_steps) == (5, 128, 3)


@pytest.mark.parametrize("name,vit", [("ViT-B-32", True), ("coca_ViT-B-32", True), ("RN50", False),
                                      ("convnext_base", False), ("EVA02-B-16", False)])
def test_model_dependent_defaults(name, vit):
    a = parse_args(["--model", name])
    if vit:
        assert (a.beta2, a.eps) == (0.98, 1e-6)
    else:
        assert (a.beta2, a.eps) == (0.999, 1e-8)
    assert get_default_params(name)["lr"] == 5e-4


def test_timm_optimizer_leaves_defaults_unset():
    a = parse_args(["--opt", "timm/lamb"])
    assert a.lr is None and a.beta1 is None and a.beta2 is None and a.eps is None


def test_explicit_values_kept():
    a = parse_args(["--model", "ViT-B-32", "--beta2", "0.95", "--lr", "1e-3"])
    assert a.beta2 == 0.95 and a.lr == 1e-3 and a.eps == 1e-6


def test_aug_cfg_kwargs():
    a = parse_args(["--aug-cfg", "scale=(0.4,1.0)", "re_mode=pixel", "use_timm=True", "x=None"])
    assert a.aug_cfg == {"scale": (0.4, 1.0), "re_mode": "pixel", "use_timm": True, "x": None}
    with pytest.raises(ValueError):
        parse_args(["--aug-cfg", "a=b=c"])


def test_abbreviation_and_types():
    a = parse_args(["--save-freq", "2", "--force-image-size", "224", "160", "--image-mean", "0.1", "0.2", "0.3"])
    assert a.save_frequency == 2
    assert a.force_image_size == [224, 160]
    assert a.image_mean == [0.1, 0.2, 0.3]
    assert parse_args(["--lock-text", "--siglip"]).lock_text is True


def test_bad_choice_exits_2():
    with pytest.raises(SystemExit) as e:
        parse_args(["--precision", "fp8"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        parse_args(["--square-resize-only"])  # not a 3.3 flag


def test_flag_table_complete():
    """Every 3.3 flag (spec 04 §1.2) parses; dests are names with '-' -> '_'."""
    flags = """train-data train-data-upsampling-factors val-data train-num-samples val-num-samples dataset-type
    dataset-resampled csv-separator csv-img-key csv-caption-key imagenet-val imagenet-v2 workers batch-size model
    pretrained pretrained-image cache-dir lock-image lock-image-unlocked-groups lock-image-freeze-bn-stats
    lock-text lock-text-unlocked-layers lock-text-freeze-layer-norm image-mean image-std image-interpolation
    image-resize-mode aug-cfg grad-checkpointing force-context-length force-image-size force-quick-gelu
    force-patch-dropout force-custom-text torchscript torchcompile trace use-bnb-linear siglip local-loss
    gather-with-grad loss-dist-impl coca-caption-loss-weight coca-contrastive-loss-weight epochs epochs-cooldown
    lr beta1 beta2 eps wd momentum warmup opt use-bn-sync skip-scheduler lr-scheduler lr-cooldown-end
    lr-cooldown-power accum-freq grad-clip-norm seed precision device dist-url dist-backend horovod
    ddp-static-graph no-set-device-rank logs log-local name report-to wandb-notes wandb-project-name debug
    log-every-n-steps copy-codebase save-frequency save-most-recent resume delete-previous-checkpoint
    remote-sync remote-sync-frequency remote-sync-protocol zeroshot-frequency val-frequency distill-model
    distill-pretrained""".split()
    a = vars(parse_args([]))
    for flag in flags:
        assert flag.replace("-", "_") in a, flag


def test_help_is_grouped():
    out = subprocess.run([sys.executable, "-c", "from open_clip_train.params import build_parser;"
                          "build_parser().print_help()"], capture_output=True, text=True).stdout
    for group in ("data:", "model:", "loss:", "optimisation:", "precision:", "distributed:", "logging:",
                  "checkpointing:", "eval:", "distillation:"):
        assert group in out
    assert isinstance(parse_args([]), argparse.Namespace)
