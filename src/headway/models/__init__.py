"""What is computed: model definitions with checkpoint-compatible names, and weight loading."""

from headway.models.checkpoint import CheckpointMismatchError, load_weights, read_checkpoint
from headway.models.cswintt import CONFIGS, CSWinTT, CSWinTTConfig, build_cswintt, get_config

__all__ = [
    "CONFIGS",
    "CSWinTT",
    "CSWinTTConfig",
    "CheckpointMismatchError",
    "build_cswintt",
    "get_config",
    "load_weights",
    "read_checkpoint",
]
