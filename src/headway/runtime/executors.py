"""Moved to :mod:`headway.tracking.executors` (the executors are CSWinTT stage plumbing, and
``runtime/`` stays free of model code); this alias keeps old imports working for one release."""

from headway.tracking.executors import *  # noqa: F403
from headway.tracking.executors import EXECUTORS, Executor, build_executor, check_executor

__all__ = ["EXECUTORS", "Executor", "build_executor", "check_executor"]
