"""Published weights: the table of known weights and `create_model(..., pretrained=True | tag)`."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn


def load_pretrained(model: nn.Module, name: str, tag: Optional[str] = None) -> nn.Module:
    """Load the published weights of `name` (optionally the weights tagged `tag`) into `model`."""
    raise ValueError(f"no published weights are registered for {name!r}"
                     + (f" (tag {tag!r})" if tag else "")
                     + "; pass pretrained=PATH_OR_URL to load a checkpoint file")
