"""Scoped process settings for measurements: a thread count that is set for a block and put
back afterwards, so a library call never leaves the process running with other settings than
the ones the caller (and the manifest of a run) recorded."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[int]:
    """Run the block with ``count`` intra-op threads (None: leave as is), then restore the
    previous count. Yields the count in force."""
    previous = torch.get_num_threads()
    if count is not None:
        if count < 1:
            raise ValueError(f"thread count must be at least 1, got {count}")
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        if count is not None:
            torch.set_num_threads(previous)


def keeps_global_rng(function: F) -> F:
    """Run ``function`` on a fork of torch's global random state: it may seed and draw as it
    likes (its numbers stay reproducible), and the caller's random stream is left untouched."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.random.fork_rng():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
