"""What is computed: model definitions with checkpoint-compatible names, and weight loading."""

from headway.models.checkpoint import CheckpointMismatchError, load_weights, read_checkpoint
from headway.models.cswintt import CONFIGS, CSWinTT, CSWinTTConfig, build_cswintt, get_config
from headway.models.registry import create_model, list_models

__all__ = [
    "CONFIGS",
    "CSWinTT",
    "CSWinTTConfig",
    "CheckpointMismatchError",
    "build_cswintt",
    "create_model",
    "get_config",
    "list_models",
    "load_weights",
    "read_checkpoint",
]
