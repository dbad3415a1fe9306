"""Paper A's Cases B and C outside the Python interpreter: ``headway-runner``, a C++ tracker
on the LibTorch inside the torch wheel (:mod:`~headway.tracking.native.build`), the
TorchScript stages or AOTInductor packages it loads (:mod:`~headway.tracking.native.stages`)
and the tracker that drives it from headway (:mod:`~headway.tracking.native.runner`):
executors ``cpp``, ``cpp-heads``, ``cpp-spectral`` and ``cpp-aoti``. The second host beside
the Python tracker; :mod:`headway.tracking.backends` picks between them."""

from headway.tracking.native.stages import NATIVE_EXECUTORS

__all__ = ["NATIVE_EXECUTORS"]
