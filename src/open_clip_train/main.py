"""Entry point of the training app: ``python -m open_clip_train.main <flags>``.

``main(argv)`` wires the components (setup, model, optimizer, resume, data, then evaluation or the
training session) and returns -1 on a configuration error or a stopped run (as 3.3 does), ``None``
on success. A run preempted by SIGTERM/SIGUSR1 saves a checkpoint and exits with 128 + the signal
number (``SystemExit``). The command line exits with 2 on configuration errors and 1 when training
had to stop. Also runs as a script: ``python -u src/open_clip_train/main.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys

if __package__ in (None, ""):  # script form: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

# Besides what main uses, 3.3's main module exposed the names it imported (create_loss, get_data,
# natural_key, cosine_lr, ...): code written for 3.3 imports them from here, so they are kept (F401).
from open_clip import create_loss, create_model_and_transforms, get_tokenizer, trace_model  # noqa: F401
from open_clip.optional_modules import optional_module_attributes
from open_clip_train import experiment as exp
from open_clip_train.checkpoint import (  # noqa: F401
    LATEST_CHECKPOINT_NAME,
    get_latest_checkpoint,
    natural_key,
)
from open_clip_train.data import get_data
from open_clip_train.distributed import (  # noqa: F401
    broadcast_object,
    host_group,
    init_distributed_device,
    is_master,
)
from open_clip_train.errors import ConfigError, Preempted, StallError, TrainingError
from open_clip_train.evaluate import evaluate
from open_clip_train.experiment import copy_codebase  # noqa: F401
from open_clip_train.file_utils import check_exists, pt_load, remote_sync, start_sync_process  # noqa: F401
from open_clip_train.fsdp import build_sharded_model, ensure_process_group
from open_clip_train.logger import setup_logging
from open_clip_train.model_setup import (
    apply_locks,
    build_loss,
    create_models,
    create_teacher,
    replace_with_bnb_linear,
    wrap_ddp,
)
from open_clip_train.optim import create_optimizer, create_scaler
from open_clip_train.params import parse_args
from open_clip_train.preemption import requeue_slurm_job
from open_clip_train.run_state import RunState
from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr, create_scheduler  # noqa: F401
from open_clip_train.session import FaultTolerance, TrainingSession, make_watchdog, preempted_message
from open_clip_train.train import TrainState, train_one_epoch, unwrap_model  # noqa: F401

# `hvd`, `wandb`, `tensorboard`: the optional packages (or None) as 3.3 exposed them, imported on first read.
__getattr__, __dir__ = optional_module_attributes(
    __name__, {"hvd": "horovod.torch", "wandb": "wandb", "tensorboard": "torch.utils.tensorboard"}
)


def random_seed(seed: int = 42, rank: int = 0) -> None:
    """Seed torch, numpy and ``random`` with ``seed + rank``."""
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


def main(args=None):
    """Run training/evaluation for the flags in ``args``; -1 on a handled error, else None.

    A preempted run (SIGTERM/SIGUSR1) raises ``SystemExit(128 + signal number)`` once its checkpoint
    is written, so every entry point exits the way the scheduler expects.
    """
    try:
        return run(args)
    except (ConfigError, TrainingError, StallError) as e:
        logging.error(f"Error: {e}")
        return -1
    except Preempted as p:
        raise SystemExit(p.exit_code) from None


def cli(argv=None) -> int:
    """Command-line wrapper: exit code 2 for configuration errors, 1 for a stopped run, 128 + N for signal N."""
    try:
        result = run(argv)
    except ConfigError as e:
        logging.error(f"Error: {e}")
        return 2
    except (TrainingError, StallError) as e:
        logging.error(f"Error: {e}")
        return 1
    except Preempted as p:
        return p.exit_code
    return 2 if result == -1 else 0


def run(args=None):
    """``main`` without the error translation (raises ConfigError / TrainingError)."""
    args = parse_args(args)
    setup_logging(None, logging.DEBUG if args.debug else logging.INFO)  # console until out.log is known
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False
    try:
        device = init_distributed_device(args)
    except ImportError as e:
        raise ConfigError(str(e)) from e
    if args.distributed and not args.horovod:
        host_group()  # a collective: every rank creates the host-side (gloo) group here, at the same point

    # ---- run directory and logging
    args.name = args.name or exp.experiment_name(args)
    resume_latest = args.resume == "latest"
    log_base_path = os.path.join(args.logs, args.name)
    args.log_path = exp.log_file_path(args, log_base_path)
    if args.log_path is not None:
        os.makedirs(log_base_path, exist_ok=True)
        if os.path.exists(args.log_path) and not resume_latest:
            print("Error. Experiment already exists. Use --name {} to specify a new experiment.")
            return -1
    setup_logging(args.log_path, logging.DEBUG if args.debug else logging.INFO)
    args.wandb = "wandb" in args.report_to or "all" in args.report_to
    args.tensorboard = "tensorboard" in args.report_to or "all" in args.report_to
    args.checkpoint_path = os.path.join(log_base_path, "checkpoints")
    args.tensorboard_path = os.path.join(log_base_path, "tensorboard") if args.tensorboard and is_master(args) else ""
    args.distill = args.distill_model is not None and args.distill_pretrained is not None
    if args.force_image_size is not None and len(args.force_image_size) == 1:
        args.force_image_size = args.force_image_size[0]
    if args.lr is None:  # timm optimizers get no default lr from parse_args (3.3 crashed later)
        args.lr = 5.0e-4
    exp.validate_args(args)
    if resume_latest:
        args.resume = exp.resolve_resume_latest(args)
    _log_run_mode(args)

    # ---- model, optimizer, resume
    random_seed(args.seed, 0)
    if args.fsdp:
        ensure_process_group(args, device)
        model, preprocess_train, preprocess_val = build_sharded_model(args, device, lambda m: apply_locks(m, args))
        dist_model = create_teacher(args, device) if args.distill else None
    else:
        model, preprocess_train, preprocess_val, dist_model = create_models(args, device)
    if args.use_bnb_linear is not None:
        model = replace_with_bnb_linear(model, args.use_bnb_linear, device)
    random_seed(args.seed, args.rank)
    if args.trace:
        from open_clip.model import trace_model

        model = trace_model(model, batch_size=args.batch_size, device=device)
    if not args.fsdp:
        apply_locks(model, args)
    if is_master(args):
        logging.info("Model:")
        logging.info(f"{str(model)}")
    if args.distributed and not args.horovod and not args.fsdp:
        model = wrap_ddp(model, args, device)
        if dist_model is not None:
            dist_model = wrap_ddp(dist_model, args, device)
    optimizer = scaler = None
    if args.train_data or args.dataset_type == "synthetic":
        optimizer = create_optimizer(model, args.opt, lr=args.lr, wd=args.wd, beta1=args.beta1, beta2=args.beta2,
                                     eps=args.eps, momentum=args.momentum, layer_decay=args.layer_decay,
                                     lr_image=args.lr_image, lr_text=args.lr_text, wd_image=args.wd_image,
                                     wd_text=args.wd_text)
        optimizer = _maybe_horovod_optimizer(optimizer, model, args)
        scaler = create_scaler(args.precision, device, sharded=args.fsdp)
    run_state = RunState(model=model, optimizer=optimizer, scaler=scaler, name=args.name, args=args)
    if args.resume:
        run_state.resume(args.resume)

    # ---- data, schedule, reporters, then evaluation or the training session
    tokenizer = get_tokenizer(args.model, cache_dir=args.cache_dir, context_length=args.force_context_length)
    ft = FaultTolerance.from_args(args)
    training = bool(args.train_data) or args.dataset_type == "synthetic"
    watchdog = make_watchdog(ft, args) if training else None
    try:
        return _train_or_evaluate(args, ft, watchdog, model, dist_model, (preprocess_train, preprocess_val),
                                  run_state, tokenizer, log_base_path, resume_latest)
    finally:
        if watchdog is not None:
            watchdog.stop()


def _train_or_evaluate(args, ft: FaultTolerance, watchdog, model, dist_model, preprocess_fns, run_state: RunState,
                       tokenizer, log_base_path: str, resume_latest: bool):
    start_epoch, optimizer = run_state.epoch, run_state.optimizer
    # Opening the data can block too (a CSV on a dead mount): the stall watchdog watches it.
    with watchdog.waiting("the training data to open") if watchdog is not None else contextlib.nullcontext():
        data = _get_data(args, preprocess_fns, start_epoch, tokenizer)
    scheduler = None
    if "train" in data and optimizer is not None:
        steps_per_epoch = data["train"].dataloader.num_batches // args.accum_freq
        cooldown = steps_per_epoch * args.epochs_cooldown if args.epochs_cooldown is not None else None
        scheduler = create_scheduler(args.lr_scheduler, optimizer, args.lr, args.warmup,
                                     steps_per_epoch * args.epochs, cooldown, args.lr_cooldown_power,
                                     args.lr_cooldown_end)
    args.save_logs = bool(args.logs) and args.logs.lower() != "none" and is_master(args)
    exp.create_run_dirs(args)
    if args.copy_codebase and is_master(args):
        exp.copy_codebase(args)
    params_file = exp.write_params(args, log_base_path) if is_master(args) else None
    writer = exp.make_tb_writer(args)
    if args.wandb and is_master(args):
        exp.init_wandb(args, data, model, params_file, resume_latest)
    sync_process = _start_remote_sync(args)

    original_model = model
    if args.torchcompile:
        model = _compile(model, args)
    if "train" not in data:
        if args.use_bnb_linear is not None:
            from open_clip.utils import convert_int8_model_to_inference_mode

            convert_int8_model_to_inference_mode(model)
        evaluate(model, data, start_epoch, args, tb_writer=writer, tokenizer=tokenizer)
        return None

    # ---- train / evaluate / save
    run_state.data_info = data["train"]
    session = TrainingSession(args=args, model=model, dist_model=dist_model, data=data,
                              loss=build_loss(args, unwrap_model(original_model)), scheduler=scheduler,
                              writer=writer, tokenizer=tokenizer, run_state=run_state, ft=ft, watchdog=watchdog)
    try:
        session.run(start_epoch)
    except Preempted as p:
        logging.warning(preempted_message(p, args))
        if ft.slurm_requeue and args.rank == 0:
            requeue_slurm_job()
        _finish(args, sync_process)
        raise
    _finish(args, sync_process)
    return None


def _get_data(args, preprocess_fns, epoch: int, tokenizer) -> dict:
    try:
        data = get_data(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
    except (ValueError, RuntimeError, FileNotFoundError, AssertionError) as e:
        flag = "--train-data" if args.train_data else "--val-data"
        raise ConfigError(f"{flag}: cannot load the dataset ({str(e).strip().splitlines()[0] if str(e) else e!r}). "
                          "Check the path, --dataset-type and --train-num-samples.") from e
    if not len(data):
        raise ConfigError("At least one train or eval dataset must be specified "
                          "(--train-data, --val-data, --imagenet-val, --imagenet-v2 or --dataset-type synthetic).")
    return data


def _log_run_mode(args) -> None:
    if args.precision == "fp16":
        logging.warning("It is recommended to use AMP mixed-precision instead of FP16. "
                        "FP16 support needs further verification and tuning, especially for train.")
    trains = bool(args.train_data) or args.dataset_type == "synthetic"
    if trains and args.precision == "amp" and str(args.device).startswith("cpu"):
        # Autocast to float16 on the CPU has no fast convolution backward (torch falls back to a
        # reference kernel): an RN50 step at batch 4 takes ~58 s on 2 cores, against ~0.7 s in bf16.
        logging.warning("--precision amp autocasts to float16, which is very slow to train on the CPU "
                        "(convolution backward has no fast float16 kernel there). "
                        "Use --precision amp_bf16 or fp32 for CPU training.")
    if args.horovod:
        logging.info(f"Running in horovod mode with multiple processes / nodes. Device: {args.device}."
                     f"Process (global: {args.rank}, local {args.local_rank}), total {args.world_size}.")
    elif args.distributed:
        logging.info(f"Running in distributed mode with multiple processes. Device: {args.device}."
                     f"Process (global: {args.rank}, local {args.local_rank}), total {args.world_size}.")
    else:
        logging.info(f"Running with a single process. Device {args.device}.")


def _maybe_horovod_optimizer(optimizer, model, args):
    if not args.horovod:
        return optimizer
    import horovod.torch as hvd

    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    return optimizer


def _compile(model, args):
    logging.info("Compiling model...")
    if args.grad_checkpointing and args.distributed:
        logging.info("Disabling DDP dynamo optimizer when grad checkpointing enabled.")
        torch._dynamo.config.optimize_ddp = False
    for name in logging.root.manager.loggerDict:
        if name.startswith(("torch._dynamo", "torch._inductor", "torch._functorch", "torch._utils_internal",
                            "torch.fx")):
            logging.getLogger(name).setLevel(logging.WARNING)
    return torch.compile(model)


def _start_remote_sync(args):
    if not (args.remote_sync is not None and is_master(args)):
        return None
    local, remote = os.path.join(args.logs, args.name), os.path.join(args.remote_sync, args.name)
    if not remote_sync(local, remote, args.remote_sync_protocol):
        raise ConfigError(f"--remote-sync {args.remote_sync}: remote sync failed. Exiting.")
    logging.info("remote sync successful.")
    process = start_sync_process(args.remote_sync_frequency, local, remote, args.remote_sync_protocol)
    process.daemon = True  # never outlive the run, even when it stops with an error
    process.start()
    return process


def _finish(args, sync_process) -> None:
    if args.wandb and is_master(args):
        import wandb

        wandb.finish()
    if sync_process is not None:
        logging.info("Final remote sync.")
        sync_process.terminate()
        ok = remote_sync(os.path.join(args.logs, args.name), os.path.join(args.remote_sync, args.name),
                         args.remote_sync_protocol)
        logging.info("Final remote sync successful." if ok else "Final remote sync failed.")


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
