"""The training loop: one function, read top to bottom.

`train(cfg)` builds data, model, optimizer and the rest from a TrainConfig, then runs epochs of optimizer steps,
evaluating, logging and checkpointing as it goes. Run it alone or under torchrun (DDP). With `resume`, it picks up
from a checkpoint exactly where that run stopped, mid-epoch included, and ends with the same weights as a run that
was never interrupted (see checkpoint.py for what is saved and loader.py for why the data order is reproducible).
"""
from __future__ import annotations

import dataclasses
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from ..convert.checkpoints import adapt_keys, extract_state_dict, read_checkpoint
from ..data import (ResumableSampler, SeededDataset, ShardSampler, dataset_classes, eval_transform, make_loader,
                    open_split, subset, train_transform)
from ..layers.checkpointing import set_grad_checkpointing
from ..models.spec import create_from_spec, data_config_of
from ..utils import atomic_write
from .checkpoint import (Progress, export_weights, model_info, read_training_state, rng_state, save_training_state,
                         set_rng_state)
from .config import TrainConfig, effective_warmup_epochs
from .distill import build_teacher, distillation_loss
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, cleanup, init_distributed
from .metrics import EvalResult, autocast, evaluate, write_jsonl
from .optim import build_optimizer, lr_at, set_lr

PathLike = Union[str, os.PathLike]
StepCallback = Callable[[Progress], None]
#: How often (in steps) the progress bar's loss/accuracy are refreshed; each refresh synchronizes with the GPU.
BAR_REFRESH_STEPS = 10
#: Points per epoch of the in-epoch loss/lr log when `log_every_steps` is 0.
AUTO_STEP_LOG_POINTS = 20


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python and NumPy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (running statistics used and left unchanged)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def load_initial_weights(model: nn.Module, path: PathLike) -> list[str]:
    """Load a checkpoint for fine-tuning, skipping keys whose shape differs (e.g. another classifier size).

    Returns the names of the skipped keys.
    """
    obj, _ = read_checkpoint(path)
    expected = model.state_dict()
    state = adapt_keys(extract_state_dict(obj, source=str(path)), expected)
    skipped = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    model.load_state_dict({k: v for k, v in state.items() if k in expected and k not in skipped}, strict=False)
    return skipped


def _log(dist: DistInfo, message: str) -> None:
    if dist.is_main:
        from tqdm import tqdm

        tqdm.write(message)


def train(cfg: TrainConfig, resume: Optional[PathLike] = None,
          on_step: Optional[StepCallback] = None) -> dict[str, Any]:
    """Train as `cfg` says (continuing the run saved in `resume`, if given); returns the run's history and best."""
    dist = init_distributed(cfg.device)
    try:
        return _train(cfg, dist, resume, on_step)
    finally:
        cleanup()


def _train(cfg: TrainConfig, dist: DistInfo, resume: Optional[PathLike], on_step: Optional[StepCallback]) -> dict:
    device, out = dist.device, Path(cfg.output)
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
    writer = _tensorboard(cfg, out) if dist.is_main else None
    torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS refuses deterministic mode without it
        torch.use_deterministic_algorithms(True, warn_only=False)
    seed_everything(cfg.seed)  # the same seed on every rank: identical initial weights
    warmup = effective_warmup_epochs(cfg.warmup_epochs, cfg.epochs)
    if warmup != cfg.warmup_epochs:
        _log(dist, f"warm-up of {cfg.warmup_epochs:g} epochs is not shorter than the run ({cfg.epochs}): cut to "
                   f"{warmup:g} so that the learning rate reaches its peak {cfg.lr:g}")
        cfg = dataclasses.replace(cfg, warmup_epochs=warmup)

    # ---- data: the transforms take the model's input size, crop and normalization unless the recipe sets them
    tcfg = cfg.transform_config(data_config_of(cfg.model))
    opts = dict(download=cfg.download and dist.is_main, data_dir=cfg.data_dir, skip_corrupt=cfg.skip_corrupt)
    train_set = open_split(cfg.data, "train", train_transform(tcfg), **opts)
    val_set = open_split(cfg.data, "val", eval_transform(tcfg), **opts)
    classes = dataset_classes(train_set)
    train_set, val_set = subset(train_set, cfg.subset), subset(val_set, cfg.val_subset)
    per_rank_batch = cfg.batch_size // dist.world_size
    sampler = ResumableSampler(train_set, dist.world_size, dist.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    steps_per_epoch = sampler.num_samples // per_rank_batch
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({len(train_set)} images)")
    pin = device.type == "cuda"
    train_loader = make_loader(SeededDataset(train_set), per_rank_batch, sampler, cfg.workers, pin, cfg.seed,
                               drop_last=True)
    val_loader = make_loader(val_set, per_rank_batch, ShardSampler(len(val_set), dist.world_size, dist.rank),
                             cfg.workers, pin, cfg.seed)

    # ---- model, EMA, optimizer, loss
    model_kwargs = {"num_classes": len(classes), **cfg.model_kwargs}
    if model_kwargs["num_classes"] != len(classes):
        raise ValueError(f"model_kwargs num_classes={model_kwargs['num_classes']} but the data has {len(classes)} "
                         "classes")
    model = create_from_spec(cfg.model, **model_kwargs)
    if cfg.grad_checkpointing:
        set_grad_checkpointing(model)
    if cfg.pretrained:
        skipped = load_initial_weights(model, cfg.pretrained)
        _log(dist, f"initialized from {cfg.pretrained}" + (f" (kept random: {', '.join(skipped)})" if skipped else ""))
    info = model_info(cfg.model, model_kwargs, classes, tcfg.eval_dict())
    if cfg.sync_bn and dist.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    ema = None
    if cfg.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    teacher = None
    if cfg.teacher:
        teacher = build_teacher(cfg.teacher, cfg.teacher_pretrained, len(classes))
        teacher.to(device, memory_format=memory_format)

    # ---- resume: weights, optimizer, EMA, scaler, position, running sums and every rank's RNG state
    progress, history = Progress(), []
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # this rank's train loss sum, hits, samples
    # The in-epoch log (metrics.jsonl "steps"): this rank's mean loss over every `log_every` steps, with the lr.
    log_every = cfg.log_every_steps or max(1, steps_per_epoch // AUTO_STEP_LOG_POINTS)
    window = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum and steps since the last log point
    step_log: list[dict[str, float]] = []
    torch.manual_seed(cfg.seed + dist.rank)  # dropout differs per rank; the data order does not use this
    if resume is not None:
        ckpt = read_training_state(resume)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            if ckpt["ema"] is None:
                raise ValueError(f"{resume} was saved without EMA weights but ema_decay is set")
            ema.module.load_state_dict(ckpt["ema"])
            ema.n_averaged.copy_(ckpt["ema_n_averaged"])
        if ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        progress = Progress(**ckpt["progress"])
        history = list(ckpt["history"])
        ranks = ckpt["ranks"]
        if len(ranks) == dist.world_size:
            set_rng_state(ranks[dist.rank]["rng"])
            sums.copy_(torch.tensor(ranks[dist.rank]["sums"], dtype=torch.float64))
            window.copy_(torch.tensor(ranks[dist.rank].get("window", [0.0, 0.0]), dtype=torch.float64))
        else:
            # Another process count: the data order is the same, but per-rank RNG streams cannot be carried over.
            # The epoch's running sums are spread evenly, so that their all-reduced total is kept.
            _log(dist, f"resuming with {dist.world_size} processes instead of {len(ranks)}: the data order is kept, "
                       "dropout randomness is not")
            sums.copy_(torch.tensor([sum(r["sums"][i] for r in ranks) for i in range(3)]) / dist.world_size)
        step_log = list(ranks[0].get("steps", []))  # rank 0's log is the one written
        _log(dist, f"resumed from {resume} at epoch {progress.epoch + 1}, step {progress.step_in_epoch}")
    if dist.is_main:
        _write_config(cfg, out)

    train_model: nn.Module = model
    if dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile != "none":  # after DDP, as torch's DDP + compile guide does it
        train_model = torch.compile(train_model, mode=None if cfg.compile == "default" else cfg.compile)

    def save(path: Path) -> None:
        # Collective: every rank contributes its RNG state and running sums; only rank 0 writes.
        ranks = all_gather_objects({"rng": rng_state(), "sums": sums.tolist(), "window": window.tolist(),
                                    "steps": step_log})
        if dist.is_main:
            save_training_state(path, model=model, optimizer=optimizer, progress=progress, config=cfg.to_dict(),
                                model_info=info, ranks=ranks, ema=ema, scaler=scaler, history=history)

    _log(dist, f"training {cfg.model} at {tcfg.img_size}x{tcfg.img_size} on {len(train_set)} images ({len(classes)} "
               f"classes), {dist.world_size} process(es) on {device}, {steps_per_epoch} steps/epoch of "
               f"{cfg.batch_size} images")
    last_eval: Optional[EvalResult] = None
    for epoch in range(progress.epoch, cfg.epochs):
        # ---- one epoch of optimizer steps
        sampler.set_epoch(epoch)
        sampler.set_start(progress.step_in_epoch * per_rank_batch)
        train_model.train()
        if cfg.freeze_bn:
            freeze_batchnorm(model)
        bar = _progress_bar(train_loader, dist, cfg, epoch, steps_per_epoch, progress.step_in_epoch)
        start, seen = time.perf_counter(), 0
        for batch in bar:
            for item in batch.skipped:
                _log(dist, f"skipped unreadable image: {item.reason}")
            if len(batch) == 0:
                raise ValueError(f"every image of a batch was unreadable: {', '.join(s.path for s in batch.skipped)}")
            lr = lr_at(cfg, progress.global_step, steps_per_epoch)
            set_lr(optimizer, lr)
            images = batch.images.to(device, non_blocking=True, memory_format=memory_format)
            targets = batch.targets.to(device, non_blocking=True)
            with autocast(device, cfg.amp):
                logits = train_model(images)
                loss = criterion(logits, targets)
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                    loss = distillation_loss(logits, teacher_logits, loss, cfg.kd_weight, cfg.kd_temperature)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update_parameters(model)

            sums += torch.stack([loss.detach().double() * len(targets), (logits.argmax(1) == targets).sum().double(),
                                 torch.tensor(float(len(targets)), dtype=torch.float64, device=device)])
            seen += len(targets)
            progress.step_in_epoch += 1
            progress.global_step += 1
            window += torch.stack([loss.detach().double(), torch.ones((), dtype=torch.float64, device=device)])
            if progress.step_in_epoch % log_every == 0 or progress.step_in_epoch == steps_per_epoch:
                loss_sum_w, steps_w = window.tolist()
                step_log.append({"step": progress.global_step, "lr": lr, "loss": loss_sum_w / steps_w})
                window.zero_()
            if progress.step_in_epoch % BAR_REFRESH_STEPS == 0:
                loss_sum, hits, count = sums.tolist()
                rate = seen * dist.world_size / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{100 * hits / count:.1f}", lr=f"{lr:.3g}",
                                img_s=f"{rate:.0f}")
            if (cfg.save_every_steps and progress.global_step % cfg.save_every_steps == 0
                    and progress.step_in_epoch < steps_per_epoch):
                save(out / "last.pt")
            if on_step is not None:
                on_step(progress)
        epoch_time = time.perf_counter() - start

        # ---- end of epoch: reduce train metrics, evaluate, log, checkpoint
        loss_sum, hits, count = all_reduce_sum(sums.clone()).tolist()
        sums.zero_()
        row: dict[str, Any] = {"epoch": epoch + 1, "step": progress.global_step, "lr": lr,
                               "train_loss": loss_sum / count, "train_top1": 100 * hits / count,
                               "epoch_time_s": epoch_time, "train_img_s": seen * dist.world_size / epoch_time,
                               "lr_max": max(r["lr"] for r in step_log), "steps": step_log}
        step_log = []
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            last_eval = evaluate(model, val_loader, device, len(classes), cfg.amp, cfg.channels_last,
                                 progress=cfg.progress and dist.is_main)
            row.update(val_loss=last_eval.loss, val_top1=last_eval.top1, val_top5=last_eval.top5)
            score = last_eval.top1
            if ema is not None:
                ema_eval = evaluate(ema.module, val_loader, device, len(classes), cfg.amp, cfg.channels_last,
                                    progress=cfg.progress and dist.is_main, desc="eval (EMA)")
                row.update(ema_val_loss=ema_eval.loss, ema_val_top1=ema_eval.top1, ema_val_top5=ema_eval.top5)
                score, last_eval = ema_eval.top1, ema_eval
            is_best = score > progress.best_top1
            if is_best:
                progress.best_top1, progress.best_epoch = score, epoch + 1
        else:
            is_best = False
        history.append(row)
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        save(out / "last.pt")
        if dist.is_main:
            eval_weights = (ema.module if ema is not None else model).state_dict()
            extra = {"epoch": epoch + 1, "ema": ema is not None, "top1": row.get("ema_val_top1", row.get("val_top1"))}
            if is_best:
                _copy(out / "last.pt", out / "best.pt")
                export_weights(eval_weights, out / "best.safetensors", info, extra)
            if epoch + 1 == cfg.epochs:
                export_weights(eval_weights, out / "last.safetensors", info, extra)
            write_jsonl(history, out / "metrics.jsonl")
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch" and isinstance(value, (int, float)):
                        writer.add_scalar(key, value, epoch + 1)
                writer.flush()
            _log(dist, f"epoch {epoch + 1}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step", "steps")))

    if dist.is_main:
        if writer is not None:
            writer.close()
        if cfg.plots and history:
            from .plots import plot_confusion, plot_curves

            plot_curves(history, out / "curves.png")
            if last_eval is not None:
                plot_confusion(last_eval.confusion, classes, out / "confusion.png")
    return {"history": history, "best_top1": progress.best_top1, "best_epoch": progress.best_epoch,
            "output": str(out), "classes": classes}


def _progress_bar(loader, dist: DistInfo, cfg: TrainConfig, epoch: int, total: int, initial: int):
    from tqdm import tqdm

    if not (cfg.progress and dist.is_main):
        return _Quiet(loader)
    return tqdm(loader, total=total, initial=initial, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                dynamic_ncols=True, leave=False)


class _Quiet:
    """Iterates like a progress bar that shows nothing."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)

    def set_postfix(self, **kwargs: Any) -> None:
        pass


def _copy(src: Path, dst: Path) -> None:
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)


def _write_config(cfg: TrainConfig, out: Path) -> None:
    import yaml

    with atomic_write(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


def _tensorboard(cfg: TrainConfig, out: Path):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("tensorboard logging needs the tensorboard package "
                         "(pip install 'ghostnet-torch[tensorboard]')") from None
    return SummaryWriter(str(out / "tensorboard"))
