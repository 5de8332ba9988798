"""Deprecated path: `ghostify` is model surgery and lives in `ghostnet.surgery.ghostify`; this alias keeps old
imports working."""
from __future__ import annotations

import sys
import warnings

from ..surgery import ghostify as _moved

warnings.warn("ghostnet.convert.ghostify moved to ghostnet.surgery.ghostify", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
