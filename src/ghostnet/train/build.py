"""What a training run is made of, built from its TrainConfig: checks, data, model and optimizer, and the state
restored when resuming. `engine.train` calls these in order, then runs the loop.
"""
from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from ..data import (BadImageCounter, ResumableSampler, SeededDataset, ShardSampler, TransformConfig, check_same_classes,
                    dataset_classes, eval_transform, make_loader, open_split, subset, train_transform)
from ..layers.checkpointing import set_grad_checkpointing
from ..utils import PathLike
from .state import Progress, model_info, read_training_state, set_rng_state
from .config import TrainConfig, effective_warmup_epochs
from .distill import build_teacher
from .distributed import DistInfo, log_main
from .finetune import InitialWeights, create_initialised, freeze_backbone, initial_weights
from .layout import LayoutChoice, run_layout
from .optim import build_optimizer

#: Points per epoch of the in-epoch loss/lr log when `log_every_steps` is 0.
AUTO_STEP_LOG_POINTS = 20


@dataclass
class RunData:
    """The data of a run: transforms, loaders, and the sampler that makes the order resumable."""

    tcfg: TransformConfig
    classes: list[str]
    num_train: int
    sampler: ResumableSampler
    train_loader: Any
    val_loader: Any
    per_rank_batch: int
    steps_per_epoch: int
    bad_images: BadImageCounter  # counts the unreadable images both loaders skip (skip_bad_images)


@dataclass
class RunModel:
    """The model (unwrapped: what is saved and evaluated) and what updates it."""

    model: nn.Module
    ema: Any  # torch's AveragedModel, or None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    teacher: Optional[nn.Module]
    info: dict[str, Any]  # what rebuilds the model from a checkpoint or an export
    memory_format: torch.memory_format
    layout: LayoutChoice  # the memory format and batch fold the steps run in, and how they were chosen


@dataclass
class RunState:
    """What changes from step to step and goes into the checkpoint besides the weights."""

    progress: Progress
    history: list[dict[str, Any]]
    sums: torch.Tensor  # this rank's train loss sum, hits, samples in the epoch so far
    # The in-epoch log (metrics.jsonl "steps"): this rank's mean loss over every `log_every` steps, with the lr.
    window: torch.Tensor  # loss sum and steps since the last log point
    step_log: list[dict[str, float]]
    log_every: int


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python and NumPy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)


def check_run(cfg: TrainConfig, dist: DistInfo, resume: Optional[PathLike], out: Path) -> None:
    """Refuse settings that cannot run here, before anything is built or written."""
    device = dist.device
    if cfg.data is None:
        raise ValueError("no training data: pass --data (an ImageFolder root, a folder of .npz shards, or cifar10)")
    if resume is None and (out / "last.pt").exists():
        raise ValueError(f"{out} already holds a run (last.pt): pass --resume to continue it, or another --output")
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} (global) must divide evenly over {dist.world_size} processes")
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs CUDA; on CPU use amp bf16 or none")
    if cfg.sync_bn and device.type != "cuda":
        raise ValueError("sync_bn needs CUDA (torch's SyncBatchNorm); on CPU use freeze_bn or plain BatchNorm")


def seed_and_settle(cfg: TrainConfig, dist: DistInfo) -> TrainConfig:
    """Make the run reproducible and cut a warm-up as long as the run; returns the config the run uses."""
    torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS refuses deterministic mode without it
        torch.use_deterministic_algorithms(True, warn_only=False)
    seed_everything(cfg.seed)  # the same seed on every rank: identical initial weights
    warmup = effective_warmup_epochs(cfg.warmup_epochs, cfg.epochs)
    if warmup != cfg.warmup_epochs:
        log_main(dist, f"warm-up of {cfg.warmup_epochs:g} epochs is not shorter than the run ({cfg.epochs}): cut to "
                       f"{warmup:g} so that the learning rate reaches its peak {cfg.lr:g}")
        cfg = dataclasses.replace(cfg, warmup_epochs=warmup)
    return cfg


def resolve_weights(cfg: TrainConfig, dist: DistInfo, resume: Optional[PathLike]) -> InitialWeights:
    """Where the initial weights come from and the data config they bring (a URL is downloaded now, once). A resumed
    run loads its weights from the checkpoint and keeps the data config it stored."""
    stored = read_training_state(resume)["model_info"].get("data_config") if resume is not None else None
    return initial_weights(cfg.model, None if resume is not None else cfg.pretrained,
                           progress=cfg.progress and dist.is_main, resumed_data_config=stored)


def build_data(cfg: TrainConfig, dist: DistInfo, weights: Optional[InitialWeights] = None) -> RunData:
    """Data sets and loaders; the transforms take the input size, crop and normalization of the initial weights (or
    the model's) unless the recipe sets them."""
    weights = weights or initial_weights(cfg.model, None)
    tcfg = cfg.transform_config(weights.data_config)
    opts = dict(download=cfg.download and dist.is_main, data_dir=cfg.data_dir, skip_corrupt=cfg.skip_bad_images > 0)
    train_set = open_split(cfg.data, "train", train_transform(tcfg), **opts)
    val_set = open_split(cfg.data, "val", eval_transform(tcfg), **opts)
    check_same_classes(train_set, val_set)
    classes = dataset_classes(train_set)
    train_set, val_set = subset(train_set, cfg.subset), subset(val_set, cfg.val_subset)
    per_rank_batch = cfg.batch_size // dist.world_size
    sampler = ResumableSampler(train_set, dist.world_size, dist.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    steps_per_epoch = sampler.num_samples // per_rank_batch
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({len(train_set)} images)")
    pin = dist.device.type == "cuda"
    # Counted here, in the training process, as the batches arrive: workers only drop unreadable images.
    bad_images = BadImageCounter(cfg.skip_bad_images, prefix=f"rank {dist.rank}: " if dist.distributed else "")
    train_loader = bad_images.watch(make_loader(SeededDataset(train_set), per_rank_batch, sampler, cfg.workers, pin,
                                                cfg.seed, drop_last=True))
    val_sampler = ShardSampler(len(val_set), dist.world_size, dist.rank)
    val_loader = bad_images.watch(make_loader(val_set, per_rank_batch, val_sampler, cfg.workers, pin, cfg.seed),
                                  training=False)
    return RunData(tcfg, classes, len(train_set), sampler, train_loader, val_loader, per_rank_batch, steps_per_epoch,
                   bad_images)


def build_model(cfg: TrainConfig, dist: DistInfo, data: RunData, weights: Optional[InitialWeights] = None,
                stored_layout: Optional[dict[str, Any]] = None) -> RunModel:
    """The model (initialised from `weights` where given, its classifier sized for the data; the backbone frozen for
    a linear probe) in the run's layout (`stored_layout`, a resumed run's; else chosen: layout.py), its EMA, the
    optimizer, grad scaler, loss and teacher."""
    classes = data.classes
    model_kwargs = {"num_classes": len(classes), **cfg.model_kwargs}
    if model_kwargs["num_classes"] != len(classes):
        raise ValueError(f"model_kwargs num_classes={model_kwargs['num_classes']} but the data has {len(classes)} "
                         "classes")
    model = create_initialised(weights or initial_weights(cfg.model, None), model_kwargs,
                               log=lambda line: log_main(dist, line))
    if cfg.linear_probe:
        trainable = freeze_backbone(model)
        log_main(dist, f"linear probe: training {', '.join(trainable)}; the rest is frozen, BatchNorm in eval mode")
    if cfg.grad_checkpointing:
        set_grad_checkpointing(model)
    info = model_info(cfg.model, model_kwargs, classes, data.tcfg.eval_dict())
    if cfg.sync_bn and dist.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(dist.device)
    size = data.tcfg.img_size
    layout = run_layout(cfg.channels_last, dist, model, (data.per_rank_batch, 3, size, size), len(classes),
                        model_name=cfg.model, amp=cfg.amp, compiled=cfg.compile != "none", stored=stored_layout,
                        key_extra={"model_kwargs": model_kwargs, "grad_checkpointing": cfg.grad_checkpointing,
                                   "frozen": cfg.linear_probe or cfg.freeze_bn})
    memory_format = layout.layout.memory_format
    layout.layout.apply(model)
    ema = None
    if cfg.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.amp == "fp16")
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    teacher = None
    if cfg.teacher:
        teacher = build_teacher(cfg.teacher, cfg.teacher_pretrained, len(classes))
        teacher.to(dist.device, memory_format=memory_format)
    return RunModel(model, ema, optimizer, scaler, criterion, teacher, info, memory_format, layout)


def new_state(cfg: TrainConfig, dist: DistInfo, steps_per_epoch: int) -> RunState:
    """The state of a run at its start."""
    return RunState(progress=Progress(), history=[], sums=torch.zeros(3, dtype=torch.float64, device=dist.device),
                    window=torch.zeros(2, dtype=torch.float64, device=dist.device), step_log=[],
                    log_every=cfg.log_every_steps or max(1, steps_per_epoch // AUTO_STEP_LOG_POINTS))


def resume_state(state: RunState, parts: RunModel, dist: DistInfo, resume: PathLike) -> None:
    """Restore weights, optimizer, EMA, scaler, position, running sums and every rank's RNG state from `resume`."""
    ckpt = read_training_state(resume)
    parts.model.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    if parts.ema is not None:
        if ckpt["ema"] is None:
            raise ValueError(f"{resume} was saved without EMA weights but ema_decay is set")
        parts.ema.module.load_state_dict(ckpt["ema"])
        parts.ema.n_averaged.copy_(ckpt["ema_n_averaged"])
    if ckpt["scaler"] is not None:
        parts.scaler.load_state_dict(ckpt["scaler"])
    state.progress = Progress(**ckpt["progress"])
    state.history = list(ckpt["history"])
    ranks = ckpt["ranks"]
    if len(ranks) == dist.world_size:
        set_rng_state(ranks[dist.rank]["rng"])
        state.sums.copy_(torch.tensor(ranks[dist.rank]["sums"], dtype=torch.float64))
        state.window.copy_(torch.tensor(ranks[dist.rank].get("window", [0.0, 0.0]), dtype=torch.float64))
    else:
        # Another process count: the data order is the same, but per-rank RNG streams cannot be carried over.
        # The epoch's running sums are spread evenly, so that their all-reduced total is kept.
        log_main(dist, f"resuming with {dist.world_size} processes instead of {len(ranks)}: the data order is kept, "
                       "dropout randomness is not")
        state.sums.copy_(torch.tensor([sum(r["sums"][i] for r in ranks) for i in range(3)]) / dist.world_size)
    state.step_log = list(ranks[0].get("steps", []))  # rank 0's log is the one written
    log_main(dist, f"resumed from {resume} at epoch {state.progress.epoch + 1}, step {state.progress.step_in_epoch}")


def wrap_for_training(cfg: TrainConfig, dist: DistInfo, model: nn.Module) -> nn.Module:
    """The model as the steps run it: in DDP when distributed, compiled when asked."""
    train_model: nn.Module = model
    if dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device = dist.device
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile != "none":  # after DDP, as torch's DDP + compile guide does it
        train_model = torch.compile(train_model, mode=None if cfg.compile == "default" else cfg.compile)
    return train_model
