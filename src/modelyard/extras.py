"""Optional extras: a feature whose libraries are not installed says which extra brings them.

    >>> LogisticRegression = require("sklearn.linear_model", "router", "training a learned router").LogisticRegression
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ModelyardError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or raise a 501 that names the extra to install for `feature`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelyardError(f"{feature} needs the '{extra}' extra, which is not installed here: "
                             f"pip install 'modelyard[{extra}]' ({exc})", status=501,
                             code="extra_not_installed") from exc
