"""headway: faster inference that computes the same answers, and the numbers to prove it.

``headway.accelerate(module, example_inputs)`` is the one-call entry for any ``nn.Module``;
``headway.Tracker`` tracks one target over an application's own frames; the ``headway`` command
covers the papers' workloads (``headway --help``)."""

from typing import Any


def __getattr__(name: str) -> Any:  # the torch-heavy import only when it is asked for
    if name == "accelerate":
        from headway.acceleration import accelerate

        return accelerate
    if name in ("Tracker", "TrackResult"):
        from headway.tracking import live

        return live.FrameTracker if name == "Tracker" else live.TrackResult
    raise AttributeError(f"module 'headway' has no attribute {name!r}")
