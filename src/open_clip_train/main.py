"""Entry point of the training app: ``python -m open_clip_train.main <flags>``.

``main(argv)`` wires the components (setup, model, optimizer, resume, data, train/eval/save loop)
and returns -1 on a configuration error or a stopped run (as 3.3 does), ``None`` on success.
The command line exits with 2 on configuration errors and 1 when training had to stop.
Also runs as a script: ``python -u src/open_clip_train/main.py``.
"""

from __future__ import annotations

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
    SavePolicy,
    build_checkpoint,
    get_latest_checkpoint,
    natural_key,
    resume_from_checkpoint,
    save_epoch_checkpoint,
    save_step_checkpoint,
    set_rng_state,
)
from open_clip_train.data import get_data
from open_clip_train.distributed import (  # noqa: F401
    all_gather_object,
    barrier,
    broadcast_object,
    init_distributed_device,
    is_master,
)
from open_clip_train.errors import ConfigError, TrainingError
from open_clip_train.evaluate import evaluate
from open_clip_train.experiment import copy_codebase  # noqa: F401
from open_clip_train.file_utils import check_exists, pt_load, remote_sync, start_sync_process  # noqa: F401
from open_clip_train.logger import setup_logging
from open_clip_train.model_setup import apply_locks, build_loss, create_models, replace_with_bnb_linear, wrap_ddp
from open_clip_train.optim import create_optimizer, create_scaler
from open_clip_train.params import parse_args
from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr, create_scheduler  # noqa: F401
from open_clip_train.train import TrainState, train_one_epoch, unwrap_model

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
    """Run training/evaluation for the flags in ``args``; -1 on a handled error, else None."""
    try:
        return run(args)
    except (ConfigError, TrainingError) as e:
        logging.error(f"Error: {e}")
        return -1


def cli(argv=None) -> int:
    """Command-line wrapper: exit code 2 for configuration errors, 1 for a stopped run."""
    try:
        result = run(argv)
    except ConfigError as e:
        logging.error(f"Error: {e}")
        return 2
    except TrainingError as e:
        logging.error(f"Error: {e}")
        return 1
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
    model, preprocess_train, preprocess_val, dist_model = create_models(args, device)
    if args.use_bnb_linear is not None:
        model = replace_with_bnb_linear(model, args.use_bnb_linear, device)
    random_seed(args.seed, args.rank)
    if args.trace:
        from open_clip.model import trace_model

        model = trace_model(model, batch_size=args.batch_size, device=device)
    apply_locks(model, args)
    if is_master(args):
        logging.info("Model:")
        logging.info(f"{str(model)}")
    if args.distributed and not args.horovod:
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
        scaler = create_scaler(args.precision, device)
    resume = resume_from_checkpoint(args.resume, model, optimizer, scaler) if args.resume else None
    start_epoch = resume.start_epoch if resume else 0

    # ---- data, schedule, reporters
    tokenizer = get_tokenizer(args.model, cache_dir=args.cache_dir, context_length=args.force_context_length)
    data = _get_data(args, (preprocess_train, preprocess_val), start_epoch, tokenizer)
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
    loss = build_loss(args, unwrap_model(original_model))
    policy = SavePolicy(args.checkpoint_path, args.epochs, args.save_frequency, args.save_most_recent,
                        args.delete_previous_checkpoint, args.save_every_n_steps)
    state = _initial_state(resume, args)

    def checkpoint(epoch: int, batch_in_epoch: int, completed_epoch: int | None = None):
        rngs = all_gather_object(args, _rng()) if args.distributed else None
        data_state = _loader_state(data["train"]) if batch_in_epoch else None
        if batch_in_epoch and args.distributed:
            # WebDataset positions differ per rank and worker: keep every rank's (the loader picks its own).
            data_state = all_gather_object(args, data_state)
        if not args.save_logs:
            return
        ckpt = build_checkpoint(
            model=original_model, optimizer=optimizer, scaler=scaler, name=args.name,
            epoch=epoch if completed_epoch is None else completed_epoch, global_step=state.global_step,
            batch_in_epoch=batch_in_epoch, epoch_start_rng=state.epoch_start_rng if batch_in_epoch else None,
            data_state=data_state, rng_per_rank=rngs)
        if completed_epoch is None:
            save_step_checkpoint(ckpt, policy)
        else:
            save_epoch_checkpoint(ckpt, completed_epoch, policy)

    def step_hook(st: TrainState, epoch: int, batch_in_epoch: int) -> None:
        if args.save_every_n_steps and st.global_step % args.save_every_n_steps == 0:
            checkpoint(epoch, batch_in_epoch)

    for epoch in range(start_epoch, args.epochs):
        if is_master(args):
            logging.info(f"Start epoch {epoch}")
        try:
            train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args,
                            tb_writer=writer, state=state, step_hook=step_hook)
        except _data_errors() as e:
            raise TrainingError(f"--train-data: {e} (epoch {epoch}); saved checkpoints are intact.") from e
        completed_epoch = epoch + 1
        _log_bad_samples(data["train"], completed_epoch, args, writer)
        if any(v in data for v in ("val", "imagenet-val", "imagenet-v2")):
            evaluate(model, data, completed_epoch, args, tb_writer=writer, tokenizer=tokenizer)
            barrier(args)
        checkpoint(epoch, 0, completed_epoch=completed_epoch)
        barrier(args)

    _finish(args, sync_process)
    return None


def _log_bad_samples(data_info, epoch: int, args, writer) -> None:
    """Per-kind counts of the training samples the loader skipped this epoch (corrupt images, ...)."""
    counts = data_info.bad_sample_counts() if hasattr(data_info, "bad_sample_counts") else {}
    counts = {kind: n for kind, n in counts.items() if n}
    if not counts or not is_master(args):
        return
    logging.warning(f"Epoch {epoch}: skipped bad training samples: "
                    + ", ".join(f"{kind}={n}" for kind, n in sorted(counts.items())))
    if writer is not None:
        for kind, n in counts.items():
            writer.add_scalar(f"train/bad_samples/{kind}", n, epoch)


def _data_errors() -> tuple:
    try:
        from open_clip_train.data import DataQualityError
    except ImportError:
        return ()
    return (DataQualityError,)


def _rng() -> dict:
    from open_clip_train.checkpoint import get_rng_state

    return get_rng_state()


def _initial_state(resume, args) -> TrainState:
    """Training progress to continue from (RNG restored now for epoch-boundary resumes)."""
    if resume is None:
        return TrainState()
    rng = resume.rng
    if resume.rng_per_rank is not None and len(resume.rng_per_rank) == args.world_size:
        rng = resume.rng_per_rank[args.rank]
    state = TrainState(global_step=resume.global_step, start_batch=resume.batch_in_epoch)
    if resume.batch_in_epoch:
        state.resume_rng, state.epoch_start_rng, state.data_state = rng, resume.epoch_start_rng, resume.data_state
    elif rng is not None:
        set_rng_state(rng)
    return state


def _loader_state(data_info):
    for obj in (data_info, data_info.dataloader):
        if hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict"):
            return obj.state_dict()
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
