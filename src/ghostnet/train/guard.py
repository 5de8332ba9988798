"""Guards that keep a run from going bad silently.

- A step whose loss (or, with gradient clipping, gradient norm) is NaN or infinite is never applied to the weights.
  Up to `skip_nonfinite_steps` such steps are skipped and counted, as fp16 grad scalers skip overflowing steps; the
  next one stops the run with `TrainingDiverged`, which names the step and the last good checkpoint.
- Weights are checked to be finite before every save, so a checkpoint or export is never overwritten by NaN weights.
- A running loss that grows to LOSS_GROWTH_FACTOR times the run's reference loss is reported once, and the run goes on.

Under DDP every decision is all-reduced, so all processes skip, stop or save together and none waits for the others
in a collective forever.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Iterable, Optional

import torch

from .state import Progress
from .distributed import DistInfo, all_reduce_sum

#: A logged running loss this many times the reference (the run's first logged loss, at least ln(classes): the loss of
#: a uniform guess, where a classifier starts) is reported as a loss blowing up. Healthy training only lowers the
#: loss from there; 100x (230 nats for 10 classes, 690 for 1000) means logits in the hundreds, which no learning run
#: reaches, while the run is often still finite and a warning can still help. Reported once per run.
LOSS_GROWTH_FACTOR = 100.0
#: The exit status of `ghostnet train` when the run stopped with TrainingDiverged (2 is a bad setting or file, 130
#: Ctrl-C).
DIVERGED_STATUS = 3
#: What a diverged run's message suggests (a resumed run cannot change lr or clipping: it is started again).
ADVICE = "lower --lr, set --grad-clip or check the data, then train again"


class TrainingDiverged(RuntimeError):
    """The loss, gradient norm or weights became NaN/inf (beyond the steps the run may skip); the message names the
    step and the last good checkpoint, which was kept intact."""


def warn_main(dist: DistInfo, message: str) -> None:
    """A warning line on the main process's stderr, above any progress bar."""
    if dist.is_main:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


def step_is_finite(loss: torch.Tensor, grad_norm: Optional[torch.Tensor], distributed: bool) -> bool:
    """Whether a step's loss (and gradient norm, when given) is finite on every process.

    The one host-device synchronisation this costs per step replaces the one the loop had (see engine._record_step).
    """
    ok = torch.isfinite(loss.detach()).all()
    if grad_norm is not None:
        ok = ok & torch.isfinite(grad_norm).all()
    if distributed:
        bad = (~ok).to(torch.float32)
        return all_reduce_sum(bad).item() == 0
    return bool(ok)


def skip_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, unscaled: bool) -> None:
    """Leave a non-finite step unapplied. An enabled grad scaler is still told about it (it lowers its scale, and its
    per-step state is reset, or the next `unscale_` would refuse to run)."""
    if scaler.is_enabled():
        if not unscaled:
            scaler.unscale_(optimizer)
        scaler.update()


class BufferBackup:
    """A copy of a model's buffers (BatchNorm running statistics) taken before each step, put back when the step is
    skipped: a non-finite forward pass updates them too, and NaN running statistics would spoil every evaluation.
    One batched copy per step, of a few KB for the models here."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.buffers = [b for b in model.buffers()]
        self.saved = [b.detach().clone() for b in self.buffers]

    def save(self) -> None:
        """Copy the buffers as they are before the step."""
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def restore(self) -> None:
        """Put the buffers back as they were before the step."""
        if self.buffers:
            with torch.no_grad():
                torch._foreach_copy_(self.buffers, self.saved)


def weights_finite(states: Iterable[dict[str, torch.Tensor]], device: torch.device, distributed: bool) -> bool:
    """Whether every floating-point tensor of the state dicts is finite, on every process (one synchronisation)."""
    flags = [torch.isfinite(t).all() for state in states for t in state.values() if t.is_floating_point()]
    bad = torch.zeros((), dtype=torch.float32, device=device)
    if flags:
        bad += (~torch.stack([f.to(device) for f in flags]).all()).to(torch.float32)
    if distributed:
        all_reduce_sum(bad)
    return bad.item() == 0


def check_weights(models: list[torch.nn.Module], dist: DistInfo, progress: Progress, path: Path,
                  checkpoint: Optional[Path]) -> None:
    """Raise TrainingDiverged, before anything is written to `path`, if a weight or buffer of `models` is NaN/inf."""
    if not weights_finite([m.state_dict() for m in models], dist.device, dist.distributed):
        raise TrainingDiverged(f"training diverged by global step {progress.global_step}: the weights are NaN/inf, so "
                               f"they were not saved to {path}; {last_good(checkpoint)}; {ADVICE}")


def count_nonfinite_step(progress: Progress, what: str, limit: int, checkpoint: Optional[Path],
                         dist: DistInfo) -> None:
    """Count a non-finite step as skipped (a warning line), or raise TrainingDiverged when `limit` skips are used."""
    if progress.skipped_steps >= limit:
        raise TrainingDiverged(nonfinite_message(progress, what, limit, checkpoint))
    progress.skipped_steps += 1
    warn_main(dist, f"skipped {where(progress)}: {what}; the step was not applied ({progress.skipped_steps} of "
                    f"{limit} allowed by --skip-nonfinite-steps)")


def where(progress: Progress) -> str:
    """The step being taken, as a user counts: 'epoch 2, step 3 (global step 8)'."""
    return f"epoch {progress.epoch + 1}, step {progress.step_in_epoch + 1} (global step {progress.global_step + 1})"


def last_good(checkpoint: Optional[Path]) -> str:
    """The clause naming the last good checkpoint (kept intact), or saying there is none yet."""
    if checkpoint is None or not checkpoint.is_file():
        return "no checkpoint had been saved yet"
    return f"the last good checkpoint is {checkpoint} (kept intact)"


def nonfinite_message(progress: Progress, what: str, limit: int, checkpoint: Optional[Path]) -> str:
    """The one line TrainingDiverged says when a non-finite step is one too many."""
    skipped = f"after skipping {limit} such step(s) (--skip-nonfinite-steps {limit})" if limit else \
        "(--skip-nonfinite-steps N skips up to N such steps)"
    return (f"training diverged at {where(progress)}: {what} {skipped}; the step was not applied and "
            f"{last_good(checkpoint)}; {ADVICE}")


def describe_nonfinite(loss: torch.Tensor, grad_norm: Optional[torch.Tensor]) -> str:
    """'the loss is nan' or 'the gradient norm is inf' (read only once the step is known to be bad)."""
    value = loss.detach().float().item()
    if not math.isfinite(value):
        return f"the loss is {value}"
    norm = grad_norm.float().item() if grad_norm is not None else 0.0
    if not math.isfinite(norm):
        return f"the gradient norm is {norm}"
    return "the loss is NaN/inf on another process"


def loss_growth(progress: Progress, loss: float, num_classes: int) -> Optional[str]:
    """Track the reference loss; the warning line when `loss` (a logged running loss) first passes
    LOSS_GROWTH_FACTOR times it, None otherwise."""
    if progress.reference_loss <= 0:
        progress.reference_loss = max(loss, math.log(max(num_classes, 2)))
        return None
    if progress.loss_warned or not loss > LOSS_GROWTH_FACTOR * progress.reference_loss:
        return None
    progress.loss_warned = True
    return (f"warning: the training loss grew to {loss:.4g} at global step {progress.global_step}, "
            f"{loss / progress.reference_loss:.3g}x its reference {progress.reference_loss:.4g} (the run's first "
            f"loss, at least ln(classes)): the run is likely diverging (lower --lr or set --grad-clip)")
