"""The training loop, read top to bottom.

`train(cfg)` builds data, model, optimizer and the rest from a TrainConfig, then runs epochs of optimizer steps,
evaluating, logging and checkpointing as it goes. Run it alone or under torchrun (DDP). With `resume`, it picks up
from a checkpoint exactly where that run stopped, mid-epoch included, and ends with the same weights as a run that
was never interrupted (see state.py for what is saved and loader.py for why the data order is reproducible).

`_train` is the outline: check the settings and build the run (build.py), restore the saved state when resuming,
then for each epoch `_train_epoch` (the optimizer steps) and `_end_epoch` (evaluate, log, checkpoint). The functions
below it follow in that order; `_Run` holds what they share.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ..allocator import tune_allocator
from ..layers.folded_conv import compile_settings
from ..utils import PathLike, atomic_write
from .build import (RunData, RunModel, RunState, build_data, build_model, check_run, new_state, resolve_weights,
                    resume_state, seed_and_settle, wrap_for_training)
from .state import Progress, export_weights, read_training_state, rng_state, save_training_state
from .config import TrainConfig
from .distill import distillation_loss
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, cleanup, init_distributed, log_main
from .guard import (BufferBackup, check_weights, count_nonfinite_step, describe_nonfinite, loss_growth, skip_step,
                    step_is_finite, warn_main)
from .lock import hold_run_lock
from .metrics import EvalResult, autocast, evaluate, write_jsonl
from .optim import lr_at, set_lr

StepCallback = Callable[[Progress], None]
#: How often (in steps) the progress bar's loss/accuracy are refreshed; each refresh synchronizes with the GPU.
BAR_REFRESH_STEPS = 10

__all__ = ["StepCallback", "set_batchnorm_eval", "train"]


def set_batchnorm_eval(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (running statistics used and left unchanged); the layers stay BatchNorm
    (unlike `ghostnet.dense.convert_to_frozen_batchnorm`, which replaces them)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@dataclass
class _Run:
    """Everything one training run shares between its steps."""

    cfg: TrainConfig
    dist: DistInfo
    out: Path
    data: RunData
    parts: RunModel
    state: RunState
    train_model: nn.Module  # the model as the steps run it: wrapped in DDP and/or compiled where asked
    writer: Any  # a TensorBoard SummaryWriter, or None
    last_good: Optional[Path] = None  # the last checkpoint saved (or resumed from): what a diverged run points to
    buffers: Optional[BufferBackup] = None  # BN statistics before the step, when non-finite steps may be skipped


def train(cfg: TrainConfig, resume: Optional[PathLike] = None,
          on_step: Optional[StepCallback] = None) -> dict[str, Any]:
    """Train as `cfg` says (continuing the run saved in `resume`, if given); returns the run's history and best.

    Raises TrainingDiverged when the loss, gradient norm or weights become NaN/inf (see guard.py) and RunLockedError
    when another run holds the output folder (see lock.py)."""
    tune_allocator()  # before the first large tensor: freed step memory is kept for the next step (allocator.py)
    dist = init_distributed(cfg.device)
    try:
        with hold_run_lock(cfg.output, dist, lambda line: warn_main(dist, line)):
            return _train(cfg, dist, resume, on_step)
    finally:
        cleanup()


def _train(cfg: TrainConfig, dist: DistInfo, resume: Optional[PathLike], on_step: Optional[StepCallback]) -> dict:
    out = Path(cfg.output)
    check_run(cfg, dist, resume, out)
    writer = _tensorboard(cfg, out) if dist.is_main else None
    cfg = seed_and_settle(cfg, dist)
    weights = resolve_weights(cfg, dist, resume)  # before the data: the weights' data config makes the transforms
    data = build_data(cfg, dist, weights)
    stored_layout = read_training_state(resume).get("layout") if resume is not None else None
    parts = build_model(cfg, dist, data, weights, stored_layout)  # a resumed run keeps its layout
    state = new_state(cfg, dist, data.steps_per_epoch)
    torch.manual_seed(cfg.seed + dist.rank)  # dropout differs per rank; the data order does not use this
    if resume is not None:
        resume_state(state, parts, dist, resume)
    if dist.is_main:
        _write_config(cfg, out)
    run = _Run(cfg, dist, out, data, parts, state, wrap_for_training(cfg, dist, parts.model), writer,
               last_good=Path(resume) if resume is not None else None,
               buffers=BufferBackup(parts.model) if cfg.skip_nonfinite_steps else None)
    if resume is not None:
        _redo_epoch_outputs(run, resume)

    log_main(dist, f"training {cfg.model} at {data.tcfg.img_size}x{data.tcfg.img_size} on {data.num_train} images "
                   f"({len(data.classes)} classes), {dist.world_size} process(es) on {dist.device}, "
                   f"{data.steps_per_epoch} steps/epoch of {cfg.batch_size} images")
    last_eval: Optional[EvalResult] = None
    with compile_settings(parts.model) if cfg.compile != "none" else contextlib.nullcontext():
        for epoch in range(state.progress.epoch, cfg.epochs):
            lr, seen, epoch_time = _train_epoch(run, epoch, on_step)
            evaluated = _end_epoch(run, epoch, lr, seen, epoch_time)
            if evaluated is not None:
                last_eval = evaluated
    if dist.is_main:
        _finish(run, last_eval)
    return {"history": state.history, "best_top1": state.progress.best_top1, "best_epoch": state.progress.best_epoch,
            "output": str(out), "classes": data.classes}


# ----------------------------------------------------------------------------------------------- the loop
def _train_epoch(run: _Run, epoch: int, on_step: Optional[StepCallback]) -> tuple[float, int, float]:
    """The optimizer steps of one epoch (from where a resumed run stopped); returns the last lr, the images this rank
    saw and the time taken."""
    cfg, dist, data, progress = run.cfg, run.dist, run.data, run.state.progress
    data.sampler.set_epoch(epoch)
    data.sampler.set_start(progress.step_in_epoch * data.per_rank_batch)
    run.train_model.train()
    if cfg.freeze_bn or cfg.linear_probe:  # a linear probe's frozen backbone keeps its BN statistics too
        set_batchnorm_eval(run.parts.model)  # train() above put them back in training mode
    bar = _progress_bar(data.train_loader, dist, cfg, epoch, data.steps_per_epoch, progress.step_in_epoch)
    start, seen = time.perf_counter(), 0
    for batch in bar:  # unreadable images were dropped, logged and counted on the way (RunData.bad_images)
        if len(batch) == 0:
            raise ValueError(f"every image of a batch was unreadable: {', '.join(s.path for s in batch.skipped)}")
        lr = lr_at(cfg, progress.global_step, data.steps_per_epoch)
        set_lr(run.parts.optimizer, lr)
        loss, logits, targets, applied = _step(run, batch)
        logged = _record_step(run.state, loss, logits, targets, lr, data.steps_per_epoch, applied)
        if logged is not None:
            _check_growth(run, logged)
        seen += len(targets)
        if progress.step_in_epoch % BAR_REFRESH_STEPS == 0:
            loss_sum, hits, count = run.state.sums.tolist()
            rate = seen * dist.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{100 * hits / count:.1f}", lr=f"{lr:.3g}",
                            img_s=f"{rate:.0f}")
        if (cfg.save_every_steps and progress.global_step % cfg.save_every_steps == 0
                and progress.step_in_epoch < data.steps_per_epoch):
            _save(run, run.out / "last.pt")
        if on_step is not None:
            on_step(progress)
    # `lr` is bound: an epoch always has a step left (mid-epoch checkpoints are never taken at its last step).
    return lr, seen, time.perf_counter() - start


def _step(run: _Run, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """One optimizer step (and EMA update) on a batch; returns the loss, the logits, the targets and whether the step
    was applied (a non-finite one is skipped, or stops the run: see guard.py)."""
    cfg, parts, device = run.cfg, run.parts, run.dist.device
    images = batch.images.to(device, non_blocking=True, memory_format=parts.memory_format)
    targets = batch.targets.to(device, non_blocking=True)
    if run.buffers is not None:
        run.buffers.save()
    with autocast(device, cfg.amp):
        logits = run.train_model(images)
        loss = parts.criterion(logits, targets)
        if parts.teacher is not None:
            with torch.no_grad():
                teacher_logits = parts.teacher(images)
            loss = distillation_loss(logits, teacher_logits, loss, cfg.kd_weight, cfg.kd_temperature)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    grad_norm = None
    if cfg.grad_clip:
        parts.scaler.unscale_(parts.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.grad_clip)
    # An fp16 grad scaler skips steps with overflowing gradients itself (that is how it finds its scale): with one,
    # only the loss is checked.
    checked_norm = None if parts.scaler.is_enabled() else grad_norm
    if not step_is_finite(loss, checked_norm, run.dist.distributed):
        count_nonfinite_step(run.state.progress, describe_nonfinite(loss, checked_norm), cfg.skip_nonfinite_steps,
                             run.last_good, run.dist)
        skip_step(parts.scaler, parts.optimizer, unscaled=bool(cfg.grad_clip))
        if run.buffers is not None:
            run.buffers.restore()
        return loss, logits, targets, False
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    if parts.ema is not None:
        parts.ema.update_parameters(parts.model)
    return loss, logits, targets, True


def _record_step(state: RunState, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, lr: float,
                 steps_per_epoch: int, applied: bool = True) -> Optional[dict[str, Any]]:
    """Count a step: running sums (of applied steps only), position, and the in-epoch log (a point every `log_every`
    steps and at the epoch's last step); returns the log point written, if any."""
    device, progress = state.sums.device, state.progress
    if applied:
        # torch.full, not torch.tensor: a tensor from a Python number is a host-to-device copy, which waits for the
        # GPU; the loop's one wait per step is the finiteness check (guard.step_is_finite).
        count = torch.full((), float(len(targets)), dtype=torch.float64, device=device)
        state.sums += torch.stack([loss.detach().double() * count, (logits.argmax(1) == targets).sum().double(), count])
        state.window += torch.stack([loss.detach().double(), torch.ones((), dtype=torch.float64, device=device)])
    progress.step_in_epoch += 1
    progress.global_step += 1
    if progress.step_in_epoch % state.log_every == 0 or progress.step_in_epoch == steps_per_epoch:
        loss_sum_w, steps_w = state.window.tolist()
        state.window.zero_()
        if steps_w:  # a window of skipped steps only has no loss to log
            state.step_log.append({"step": progress.global_step, "lr": lr, "loss": loss_sum_w / steps_w})
            return state.step_log[-1]
    return None


def _check_growth(run: _Run, logged: dict[str, Any]) -> None:
    """Warn once (on stderr and in the log point) when the running loss has grown by orders of magnitude."""
    warning = loss_growth(run.state.progress, logged["loss"], len(run.data.classes))
    if warning is not None:
        logged["warning"] = warning
        warn_main(run.dist, warning)


def _save(run: _Run, path: Path) -> None:
    """Write the resumable checkpoint. Collective: every rank contributes its RNG state, running sums, step log and
    layout; only rank 0 writes. Non-finite weights are never written (every other save copies or exports these
    weights)."""
    state, parts = run.state, run.parts
    check_weights([parts.model] + ([parts.ema.module] if parts.ema is not None else []), run.dist, state.progress,
                  path, run.last_good)
    ranks = all_gather_objects({"rng": rng_state(), "sums": state.sums.tolist(), "window": state.window.tolist(),
                                "steps": state.step_log, "layout": parts.layout.layout.name})
    if run.dist.is_main:
        save_training_state(path, model=parts.model, optimizer=parts.optimizer, progress=state.progress,
                            config=run.cfg.to_dict(), model_info=parts.info, ranks=ranks, ema=parts.ema,
                            scaler=parts.scaler, history=state.history, layout=parts.layout.to_dict())
    run.last_good = path


# ----------------------------------------------------------------------------------------------- end of an epoch
def _epoch_lr_max(cfg: TrainConfig, epoch: int, steps_per_epoch: int) -> float:
    """The highest learning rate of the epoch's steps (the lr is a function of the step, so it needs no log)."""
    first = epoch * steps_per_epoch
    return max(lr_at(cfg, step, steps_per_epoch) for step in range(first, first + steps_per_epoch))


def _end_epoch(run: _Run, epoch: int, lr: float, seen: int, epoch_time: float) -> Optional[EvalResult]:
    """Reduce the epoch's train metrics, evaluate when due, log and checkpoint; returns the evaluation, if any."""
    cfg, dist, state = run.cfg, run.dist, run.state
    progress = state.progress
    loss_sum, hits, count = all_reduce_sum(state.sums.clone()).tolist()
    state.sums.zero_()
    row: dict[str, Any] = {"epoch": epoch + 1, "step": progress.global_step, "lr": lr,
                           "train_loss": loss_sum / count if count else None,  # None: every step was skipped
                           "train_top1": 100 * hits / count if count else None,
                           "epoch_time_s": epoch_time, "train_img_s": seen * dist.world_size / epoch_time,
                           "lr_max": _epoch_lr_max(cfg, epoch, run.data.steps_per_epoch),
                           "skipped_steps": progress.skipped_steps - sum(r.get("skipped_steps", 0)
                                                                         for r in state.history),
                           "steps": state.step_log}
    if not state.history:  # how the layout was chosen, and every candidate's step time: once, in the first row
        row["layout"] = run.parts.layout.to_dict()
        row["allocator"] = tune_allocator()
    warnings = [point["warning"] for point in state.step_log if "warning" in point]
    if warnings:
        row["loss_warning"] = warnings[0]
    state.step_log = []
    evaluated, is_best = None, False
    if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
        evaluated = _evaluate(run, row)
        is_best = evaluated.top1 > progress.best_top1
        if is_best:
            progress.best_top1, progress.best_epoch = evaluated.top1, epoch + 1
    if cfg.skip_bad_images:  # collective: every rank's count and files
        row.update(run.data.bad_images.end_epoch(all_gather_objects))
    state.history.append(row)
    progress.epoch, progress.step_in_epoch = epoch + 1, 0
    _save(run, run.out / "last.pt")
    if dist.is_main:
        _write_epoch_outputs(run, epoch, row, is_best)
    return evaluated


def _evaluate(run: _Run, row: dict[str, Any]) -> EvalResult:
    """Evaluate the model (and its EMA) into `row`; returns the result that scores the epoch (the EMA's, if any)."""
    cfg, dist, parts, data = run.cfg, run.dist, run.parts, run.data
    channels_last = parts.layout.layout.channels_last
    result = evaluate(parts.model, data.val_loader, dist.device, len(data.classes), cfg.amp, channels_last,
                      progress=cfg.progress and dist.is_main)
    row.update(val_loss=result.loss, val_top1=result.top1, val_top5=result.top5)
    if parts.ema is None:
        return result
    ema_eval = evaluate(parts.ema.module, data.val_loader, dist.device, len(data.classes), cfg.amp,
                        channels_last, progress=cfg.progress and dist.is_main, desc="eval (EMA)")
    row.update(ema_val_loss=ema_eval.loss, ema_val_top1=ema_eval.top1, ema_val_top5=ema_eval.top5)
    return ema_eval


def _write_epoch_outputs(run: _Run, epoch: int, row: dict[str, Any], is_best: bool, again: bool = False) -> None:
    """Rank 0's files after an epoch: best checkpoint and exports, metrics.jsonl, TensorBoard, the log line (the
    last two not `again`)."""
    cfg, out, parts = run.cfg, run.out, run.parts
    eval_weights = (parts.ema.module if parts.ema is not None else parts.model).state_dict()
    extra = {"epoch": epoch + 1, "ema": parts.ema is not None, "top1": row.get("ema_val_top1", row.get("val_top1"))}
    if is_best:
        _copy(out / "last.pt", out / "best.pt")
        export_weights(eval_weights, out / "best.safetensors", parts.info, extra)
    if epoch + 1 == cfg.epochs:
        export_weights(eval_weights, out / "last.safetensors", parts.info, extra)
    write_jsonl(run.state.history, out / "metrics.jsonl")
    if again:
        return
    if run.writer is not None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                run.writer.add_scalar(key, value, epoch + 1)
        run.writer.flush()
    log_main(run.dist, f"epoch {epoch + 1}: " + ", ".join(
        f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, (int, float)) and k not in ("epoch", "step")))


def _redo_epoch_outputs(run: _Run, resume: PathLike) -> None:
    """A run resumed from its last.pt at an epoch's end may have been stopped (Ctrl-C) between writing last.pt and the
    epoch's other files: rank 0 writes them again from the same weights, so that best.pt and the exports are whole."""
    progress = run.state.progress
    at_epoch_end = progress.step_in_epoch == 0 and progress.epoch > 0 and len(run.state.history) == progress.epoch
    if run.dist.is_main and at_epoch_end and Path(resume).resolve() == (run.out / "last.pt").resolve():
        _write_epoch_outputs(run, progress.epoch - 1, run.state.history[-1], progress.best_epoch == progress.epoch,
                             again=True)


def _finish(run: _Run, last_eval: Optional[EvalResult]) -> None:
    """Rank 0's end of the run: close TensorBoard, draw the curves and the last evaluation's confusion matrix."""
    if run.writer is not None:
        run.writer.close()
    if run.cfg.plots and run.state.history:
        from .plots import plot_confusion, plot_curves

        plot_curves(run.state.history, run.out / "curves.png")
        if last_eval is not None:
            plot_confusion(last_eval.confusion, run.data.classes, run.out / "confusion.png")


# ----------------------------------------------------------------------------------------------- small helpers
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
