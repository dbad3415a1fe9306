"""The tracker's constants in one place: the timed stages, the network stage calls, the crop
factors and image normalisation, and the test-time settings. Training, the Python tracker and
the C++ runner (through its job file) all read them from here."""

from __future__ import annotations

from dataclasses import dataclass

from headway.errors import InputError

# The paper's Table 1 rows, then the occasional template refresh.
STAGES = ("load_preprocess", "backbone", "encoder", "decoder", "box_head", "template_update")

# The network's stage calls every executor exposes, and the CSWinTT method behind each.
STAGE_METHODS = {
    "backbone": "forward_backbone",
    "encoder": "forward_encoder",
    "decoder": "forward_decoder",
    "box_head": "forward_box_head",
    "confidence": "forward_confidence",
}

# Crops are this many times the square root of the target box's area (STARK / CSWinTT).
TEMPLATE_FACTOR = 2.0
SEARCH_FACTOR = 5.0

# The backbone's ImageNet normalisation of RGB pixels in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrackerSettings:
    """Test-time settings (the official ``TEST`` yaml block)."""

    template_factor: float = TEMPLATE_FACTOR
    search_factor: float = SEARCH_FACTOR
    update_interval: int = 200
    confidence_threshold: float = 0.5
    box_margin: float = 10.0

    def __post_init__(self) -> None:
        if self.update_interval < 1:
            raise InputError(f"update interval must be ≥ 1, got {self.update_interval}")
