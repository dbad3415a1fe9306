"""How models run, for any model: device mechanics and timing, the stream-owning worker pool,
cutting a model into jobs, and the multi-model runners. Imports no model and no transform."""

from headway.runtime.device import StageTimer, resolve_device

__all__ = ["StageTimer", "resolve_device"]
