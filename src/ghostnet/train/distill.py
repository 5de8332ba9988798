"""Knowledge distillation, as the GhostNetV3 recipe intends: hard-label loss plus soft-target cross-entropy.

The official `train.py` computes a `kd_loss` but never returns it, and accepts a `--temperature` it never uses;
here the soft-target term is returned, scaled by T^2 (Hinton et al.) so its gradient size does not depend on T.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the student's softened prediction against the teacher's, times T^2 (mean over the batch)."""
    t = temperature
    teacher_probs = F.softmax(teacher_logits.float() / t, dim=-1)
    log_student = F.log_softmax(student_logits.float() / t, dim=-1)
    return -(teacher_probs * log_student).sum(-1).mean() * (t * t)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor,
                      kd_weight: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """`hard_loss + kd_weight * soft_target_loss` (the v3 recipe uses 1:1)."""
    return hard_loss + kd_weight * soft_target_loss(student_logits, teacher_logits, temperature)


def build_teacher(spec: str, pretrained: Optional[str], num_classes: int) -> nn.Module:
    """A frozen teacher in eval mode, from any model spec (NAME, timm:NAME, torchvision:NAME, package.module:fn).

    `pretrained` is a checkpoint file, or "true" for the published weights (timm downloads them into its cache).
    """
    use_published = str(pretrained).lower() == "true"
    weights_file = pretrained if pretrained and not use_published else None
    if weights_file and not Path(weights_file).is_file():
        raise FileNotFoundError(f"teacher weights {weights_file}: no such file")
    from ..models.spec import create_from_spec

    pretrained = weights_file or (True if use_published else None)
    teacher = create_from_spec(spec, pretrained=pretrained, num_classes=num_classes)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
