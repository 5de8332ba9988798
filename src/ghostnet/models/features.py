"""Dense-prediction taps described as timm describes them: `feature_info` entries and the list of them, and the
index rule of `forward_intermediates` (timm's `feature_take_indices`).

An entry is a dict (timm's form: `info["num_chs"]`, `"reduction" in info`, `info.setdefault(...)`, so timm's own
`FeatureInfo(model.feature_info, ...)` and feature wrappers accept it) whose keys are also attributes
(`info.num_chs`, `info.stage`). A model's `feature_info` is a list of its taps (those of `out_indices` for a
`features_only` model) with timm's `FeatureInfo` methods: `channels()`, `reduction()`, `module_name()`,
`get_dicts()`, `out_indices`, `from_other()`.
"""
from __future__ import annotations

from copy import deepcopy
from typing import Any, Optional, Sequence, Union

Indices = Union[None, int, Sequence[int]]


class FeatureInfo(dict):
    """One tap: channels (`num_chs`), total stride (`reduction`), the module whose output it is (`module`) and where
    it sits in the model's own stage list (`stage`); keys and attributes alike."""

    def __init__(self, num_chs: int, reduction: int, module: str, stage: int, **extra: Any) -> None:
        super().__init__(num_chs=num_chs, reduction=reduction, module=module, stage=stage, **extra)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None



class FeatureInfoList(list):
    """A model's `feature_info`: its taps as a list (iteration, indexing and `len` give these entries), with timm's
    `FeatureInfo` accessors. `info` holds every tap of the model and `out_indices` says which of them the list holds;
    as in timm, an int or a list `idx` of the accessors indexes `info` (every tap), None means the list's taps."""

    def __init__(self, info: Sequence[FeatureInfo], out_indices: Optional[Sequence[int]] = None) -> None:
        self.info = list(info)
        self.out_indices = tuple(range(len(self.info)) if out_indices is None else out_indices)
        super().__init__(self.info[i] for i in self.out_indices)

    def from_other(self, out_indices: Sequence[int]) -> "FeatureInfoList":
        """The same taps with another selection (timm's `FeatureInfo.from_other`)."""
        return FeatureInfoList(deepcopy(self.info), out_indices)

    def get(self, key: str, idx: Union[None, int, Sequence[int]] = None) -> Any:
        """The value of `key` for each selected tap (idx None), for tap `idx` (an int) or for taps `idx` (a list)."""
        if idx is None:
            return [info[key] for info in self]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: Optional[Sequence[str]] = None, idx: Union[None, int, Sequence[int]] = None) -> Any:
        """The taps (selected, one or a list, as `get`) as dicts, restricted to `keys` when given."""
        def pick(info: FeatureInfo) -> dict:
            return dict(info) if keys is None else {k: info[k] for k in keys}

        if idx is None:
            return [pick(info) for info in self]
        if isinstance(idx, (tuple, list)):
            return [pick(self.info[i]) for i in idx]
        return pick(self.info[idx])

    def channels(self, idx: Union[None, int, Sequence[int]] = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: Union[None, int, Sequence[int]] = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: Union[None, int, Sequence[int]] = None) -> Any:
        return self.get("module", idx)


def take_indices(num_taps: int, indices: Indices = None) -> tuple[list[int], int]:
    """(absolute tap indices, the largest) for `forward_intermediates`: None is every tap, an int n the last n, a
    sequence those taps (negative ones count from the end), as timm's `feature_take_indices`."""
    if indices is None:
        indices = num_taps
    if isinstance(indices, int):
        if not 0 < indices <= num_taps:
            raise ValueError(f"indices={indices} asks for the last {indices} taps; this model has {num_taps}")
        taken = list(range(num_taps - indices, num_taps))
    else:
        taken = [num_taps + i if i < 0 else i for i in indices]
        if not taken or any(not 0 <= i < num_taps for i in taken):
            raise ValueError(f"indices must be tap indices in {-num_taps}..{num_taps - 1}, got {tuple(indices)}")
    return taken, max(taken)
