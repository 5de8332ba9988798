"""torch.hub entry points: one per registered model, e.g.

    model = torch.hub.load("<owner>/<repo>", "ghostnet_100", pretrained=True)
    model = torch.hub.load("<owner>/<repo>", "ghostnetv3_100", pretrained="raw")   # a weight tag
    torch.hub.list("<owner>/<repo>")                                               # every model name

Works from a plain source checkout: the package is imported from `src/` beside this file, no install needed.
"""
import os as _os
import sys as _sys

# Import names a hub checkout needs (torch.hub checks them before loading). safetensors reads the timm-hosted
# copies; tqdm draws the download progress bar.
dependencies = ["torch", "safetensors", "tqdm"]

_SRC = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src")
if _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)  # torch.hub only puts the repository root on sys.path, and the package is under src/

from ghostnet.models.registry import create_model as _create_model  # noqa: E402
from ghostnet.models.registry import get_model_entry as _get_model_entry  # noqa: E402
from ghostnet.models.registry import list_models as _list_models  # noqa: E402


def _entry_point(name):
    def entry(pretrained=False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{_get_model_entry(name).description}\n\n"
                     "pretrained: False (random init), True (the default published weights), a weight tag such as "
                     "'timm', 'official', 'ema' or 'raw' (see docs/model-zoo.md), or a checkpoint path/URL.\n"
                     "Other keyword arguments go to the model (num_classes, in_chans, features_only, ...).")
    return entry


# torch.hub.list() shows every public callable of this module, so only the entry points are public.
for _name in _list_models():
    globals()[_name] = _entry_point(_name)
