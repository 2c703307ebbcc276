"""Run bookkeeping: experiment name, log-dir layout, flag validation, params.txt, reporters, sync.

Layout (3.3): ``<logs>/<name>/{out.log, params.txt, tensorboard/, code/, checkpoints/}``.
Nothing except ``out.log`` is written before the configuration has been validated.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from datetime import datetime

from .distributed import broadcast_object, is_master
from .errors import ConfigError
from .params import LR_SCHEDULERS


def experiment_name(args) -> str:
    """``<date>-model_<m>-lr_<lr>-b_<bs>-j_<workers>-p_<precision>`` (the master's date on every rank)."""
    date_str = datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
    if args.distributed:
        date_str = broadcast_object(args, date_str)
    model_name_safe = args.model.replace("/", "-")
    return "-".join([
        date_str,
        f"model_{model_name_safe}",
        f"lr_{args.lr}",
        f"b_{args.batch_size}",
        f"j_{args.workers}",
        f"p_{args.precision}",
    ])


def log_file_path(args, log_base_path: str) -> str | None:
    """``out.log`` (or ``out-<rank>`` with ``--log-local``) on the logging master, None elsewhere."""
    if not is_master(args, local=args.log_local):
        return None
    name = f"out-{args.rank}" if args.log_local else "out.log"
    return os.path.join(log_base_path, name)


def _module_available(name: str) -> bool:
    if name in sys.modules:  # also honours sys.modules[name] = None, Python's "import blocked" marker
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def _is_training(args) -> bool:
    return bool(args.train_data) or args.dataset_type == "synthetic"


def validate_args(args) -> None:
    """Reject flag values/combinations that cannot work, before anything heavy happens."""
    if args.accum_freq < 1:
        raise ConfigError(f"--accum-freq {args.accum_freq}: must be >= 1.")
    if args.save_every_n_steps < 0:
        raise ConfigError(f"--save-every-n-steps {args.save_every_n_steps}: must be >= 0 (0 = off).")
    if args.keep_step_checkpoints < 0:
        raise ConfigError(f"--keep-step-checkpoints {args.keep_step_checkpoints}: must be >= 0 (0 keeps all).")
    if not args.data_stall_timeout >= 0:  # also rejects nan
        raise ConfigError(f"--data-stall-timeout {args.data_stall_timeout}: must be >= 0 seconds (0 disables).")
    if args.distill:
        if args.siglip:
            raise ConfigError("--siglip cannot be combined with --distill-model/--distill-pretrained "
                              "(distillation uses the softmax CLIP loss); drop one of them.")
        if args.accum_freq != 1:
            raise ConfigError(f"--accum-freq {args.accum_freq} cannot be combined with distillation; use 1.")
        if "coca" in args.model.lower():
            raise ConfigError(f"--model {args.model}: CoCa models cannot be distilled; drop --distill-*.")
    if args.lr_scheduler not in LR_SCHEDULERS:
        raise ConfigError(f"--lr-scheduler {args.lr_scheduler}: Unknown scheduler. "
                          f"Available options are: {', '.join(LR_SCHEDULERS)}.")
    if args.lr_scheduler == "const-cooldown" and args.epochs_cooldown is None:
        raise ConfigError("--lr-scheduler const-cooldown needs --epochs-cooldown N (number of cooldown epochs).")
    if args.trace and _is_training(args):
        raise ConfigError("--trace: Cannot train with traced model; drop --trace or the training data.")
    if args.train_data_upsampling_factors and not args.dataset_resampled:
        raise ConfigError("--train-data-upsampling-factors needs --dataset-resampled.")
    _check_optional_packages(args)
    _check_data_paths(args)
    if args.resume and args.resume != "latest" and "://" not in args.resume and not os.path.exists(args.resume):
        raise ConfigError(f"--resume {args.resume}: no such file. Pass an existing checkpoint path, or 'latest'.")


def _check_optional_packages(args) -> None:
    report_to = args.report_to
    if ("wandb" in report_to or "all" in report_to) and not _module_available("wandb"):
        raise ConfigError("--report-to wandb: the `wandb` package is not installed (pip install wandb); "
                          "use --report-to tensorboard or drop the flag.")
    if ("tensorboard" in report_to or "all" in report_to) and not _module_available("tensorboard"):
        raise ConfigError("--report-to tensorboard: Please install tensorboard (pip install tensorboard).")
    if args.use_bnb_linear is not None:
        if not _module_available("bitsandbytes"):
            raise ConfigError(f"--use-bnb-linear {args.use_bnb_linear}: the `bitsandbytes` package is not installed "
                              "(pip install 'bitsandbytes<0.50' triton); drop the flag.")
        if not str(args.device).startswith("cuda"):
            raise ConfigError(f"--use-bnb-linear {args.use_bnb_linear}: bitsandbytes' SwitchBack layers run Triton "
                              f"kernels on a CUDA GPU, and this run's device is {args.device}; drop the flag.")
    if args.remote_sync is not None and args.remote_sync_protocol == "s3" and shutil.which("aws") is None:
        raise ConfigError("--remote-sync-protocol s3: the `aws` command line tool is not on PATH; install the "
                          "AWS CLI or use --remote-sync-protocol fsspec.")


def _check_data_paths(args) -> None:
    for flag, path in (("--train-data", args.train_data), ("--val-data", args.val_data)):
        if not path or args.dataset_type == "synthetic":
            continue
        is_csv = args.dataset_type == "csv" or (
            args.dataset_type == "auto" and path.rsplit(".", 1)[-1] in ("csv", "tsv"))
        if is_csv and "://" not in path and not os.path.exists(path):
            raise ConfigError(f"{flag} {path}: file not found; pass an existing CSV/TSV file.")
    for flag, path in (("--imagenet-val", args.imagenet_val),):
        if path and "://" not in path and not os.path.isdir(path):
            raise ConfigError(f"{flag} {path}: directory not found; pass an ImageFolder root.")


def write_params(args, log_base_path: str) -> str:
    """``params.txt``: one ``key: value`` line per sorted arg; returns its path."""
    params_file = os.path.join(log_base_path, "params.txt")
    with open(params_file, "w") as f:
        for name in sorted(vars(args)):
            val = getattr(args, name)
            logging.info(f"  {name}: {val}")
            f.write(f"{name}: {val}\n")
    return params_file


def create_run_dirs(args) -> None:
    """``checkpoints/`` and (with tensorboard) ``tensorboard/`` on the master."""
    if is_master(args):
        os.makedirs(args.checkpoint_path, exist_ok=True)
        if args.tensorboard_path:
            os.makedirs(args.tensorboard_path, exist_ok=True)


def make_tb_writer(args):
    if not (args.save_logs and args.tensorboard):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(args.tensorboard_path)


def init_wandb(args, data: dict, model, params_file: str, resume_latest: bool) -> None:
    """wandb run on the master (resume='auto' when ``--resume latest`` was asked for, unlike 3.3)."""
    import wandb

    logging.debug("Starting wandb.")
    if "train" in data:
        args.train_sz = data["train"].dataloader.num_samples
    if "val" in data:
        args.val_sz = data["val"].dataloader.num_samples
    wandb.init(project=args.wandb_project_name, name=args.name, id=args.name, notes=args.wandb_notes, tags=[],
               resume="auto" if resume_latest else None, config=vars(args))
    if args.debug:
        wandb.watch(model, log="all")
    wandb.save(params_file)
    logging.debug("Finished loading wandb.")


def copy_codebase(args) -> int:
    """Copy the source tree (three levels above this file) to ``<logs>/<name>/code``.

    Returns 1 when copied, -1 when that folder already exists (3.3's return values).
    """
    new_code_path = os.path.join(args.logs, args.name, "code")
    if os.path.exists(new_code_path):
        print(f"Error. Experiment already exists at {new_code_path}. Use --name to specify a new experiment.")
        return -1
    print(f"Copying codebase to {new_code_path}")
    current_code_path = os.path.realpath(__file__)
    for _ in range(3):
        current_code_path = os.path.dirname(current_code_path)
    # Besides 3.3's log/logs/wandb, skip environments and caches: a checkout's .venv can be gigabytes.
    ignore = shutil.ignore_patterns("log", "logs", "wandb", ".venv", "venv", ".git", "__pycache__", "*.egg-info")
    shutil.copytree(current_code_path, new_code_path, ignore=ignore)
    print("Done copying code.")
    return 1


def resolve_resume_latest(args) -> str | None:
    """The checkpoint ``--resume latest`` means (master decides, result broadcast)."""
    from .checkpoint import get_latest_checkpoint

    checkpoint_path = args.checkpoint_path
    if args.remote_sync is not None:
        checkpoint_path = os.path.join(args.remote_sync, args.name, "checkpoints")
        if args.save_most_recent:
            raise ConfigError("--resume latest with --remote-sync cannot use --save-most-recent; drop one.")
        if args.remote_sync_protocol != "s3":
            raise ConfigError("--resume latest with --remote-sync needs --remote-sync-protocol s3.")
    resume_from = None
    if is_master(args):
        resume_from = get_latest_checkpoint(checkpoint_path, remote=args.remote_sync is not None)
        if resume_from:
            logging.info(f"Found latest resume checkpoint at {resume_from}.")
        else:
            logging.info(f"No latest resume checkpoint found in {checkpoint_path}.")
    if args.distributed:
        resume_from = broadcast_object(args, resume_from)
    return resume_from
