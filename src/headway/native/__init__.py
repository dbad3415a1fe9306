"""Paper A's Cases B and C outside the Python interpreter: ``headway-runner``, a C++ tracker on
the LibTorch inside the torch wheel (:mod:`~headway.native.build`), the TorchScript stages or
AOTInductor packages it loads (:mod:`~headway.native.export`) and the tracker that drives it
from headway (:mod:`~headway.native.runner`): executors ``cpp``, ``cpp-heads``,
``cpp-spectral`` and ``cpp-aoti``."""

from headway.native.export import NATIVE_EXECUTORS

__all__ = ["NATIVE_EXECUTORS"]
