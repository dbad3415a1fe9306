"""How models run: device mechanics, timing, and (later) executors and worker pools."""

from headway.runtime.device import StageTimer, resolve_device

__all__ = ["StageTimer", "resolve_device"]
