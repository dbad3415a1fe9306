"""Moved: the C++ host is :mod:`headway.tracking.native` (``export`` is now ``stages``). This
alias keeps ``headway.native``, ``headway.native.build``, ``.runner`` and ``.export`` importing
for one release; it will then be removed."""

import sys
import warnings

from headway.tracking.native import NATIVE_EXECUTORS, build, runner, stages

warnings.warn(
    "headway.native has moved to headway.tracking.native (export → stages); the alias goes "
    "in the next release",
    DeprecationWarning,
    stacklevel=2,
)
for _name, _module in (("build", build), ("runner", runner), ("export", stages)):
    sys.modules[f"{__name__}.{_name}"] = _module

__all__ = ["NATIVE_EXECUTORS", "build", "runner", "stages"]
