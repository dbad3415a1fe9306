"""Training a CSWinTT network on synthetic sequences (the built-in tracker's weights).

Two stages, as in the official recipe: stage 1 learns the boxes (5·L1 + 2·GIoU on normalised
x1y1x2y2, AdamW, gradient clipping); stage 2 learns, with binary cross-entropy, whether the search
crop holds the target (negatives come from other sequences; a positive whose predicted box has
IoU ≤ 0.5 is relabelled 0). One departure: the official stage 2 trains the confidence head
alone, on a decoder whose output already tells target from background (it was trained on real
data with a pretrained backbone). Trained from scratch on box loss only, our decoder output did
not (a logistic regression on it scored 56% on held-out samples), so stage 2 also trains the
decoder, at a tenth of the learning rate and with the box loss kept on the positives so that
the boxes stay as good; backbone, encoder and box head stay frozen.

Data: a sliding pool of sequences rendered in memory by :func:`render_sequence` from seeds
``[TRAIN_SEED, k]`` (``TRAIN_SEED`` is far from the small seeds used by ``headway synth``, so
evaluation sequences are never trained on). Each sample takes a static template frame, a dynamic
template frame between it and the search frame, and a search crop around a jittered box
(STARK's processing: size jitter exp(N(0, s)), centre jitter uniform within ±c/2 · √(area)).
Everything random is drawn from generators seeded by (seed, step), so an interrupted run resumed
from its checkpoint continues exactly as it would have.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from headway.errors import InputError
from headway.io import (
    atomic_torch_save,
    atomic_write_text,
    check_file_targets,
    locked_folder,
    read_torch_file,
)
from headway.measure import keeps_global_rng, torch_threads
from headway.models.cswintt import CSWinTT, build_cswintt
from headway.tracking.crop import sample_target
from headway.tracking.settings import IMAGENET_MEAN, IMAGENET_STD, SEARCH_FACTOR, TEMPLATE_FACTOR
from headway.tracking.synth import SynthSettings, render_sequence

TRAIN_SEED = 1_000_003  # sequences [TRAIN_SEED, k]; `headway synth --seed` below this is held out


@dataclass(frozen=True)
class TrackerTrainSettings:
    """Everything that determines a training run (stored in its checkpoints)."""

    config: str = "tiny"
    box_steps: int = 5000
    confidence_steps: int = 500
    batch_size: int = 32
    lr: float = 5e-4
    confidence_lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    dropout: float = 0.0  # training-only; the weights are the same for any inference dropout
    warmup_steps: int = 200
    lr_drop_at: float = 0.8  # share of the box steps after which the learning rate is ×0.1
    pool_size: int = 96
    refresh_every: int = 2  # steps between replacing the oldest pooled sequence
    frames: int = 60
    appearance_change_share: float = 0.5  # share of training sequences whose texture changes
    center_jitter: float = 3.0
    scale_jitter: float = 0.25
    same_template_share: float = 0.25  # samples whose dynamic template is the static one
    dynamic_gap: int = 12  # largest gap between the dynamic template and the search frame
    seed: int = 0
    threads: int | None = None

    def validate(self) -> None:
        """Raise InputError for settings that cannot train."""
        if self.box_steps < 0 or self.confidence_steps < 0:
            raise InputError("step counts must be ≥ 0")
        if self.box_steps + self.confidence_steps < 1:
            raise InputError("nothing to train: --box-steps and --confidence-steps are both 0")
        if self.batch_size < 2:
            raise InputError(f"batch size must be ≥ 2, got {self.batch_size}")
        if self.pool_size < 2 or self.refresh_every < 1:
            raise InputError("the sequence pool needs ≥ 2 sequences and refresh_every ≥ 1")
        if self.frames < 3:
            raise InputError(f"training sequences need ≥ 3 frames, got {self.frames}")
        if self.lr <= 0 or self.confidence_lr <= 0:
            raise InputError("learning rates must be positive")

    @property
    def total_steps(self) -> int:
        return self.box_steps + self.confidence_steps


# ---------------------------------------------------------------------------------------------
# Boxes and losses
# ---------------------------------------------------------------------------------------------


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_iou_and_giou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise IoU and generalised IoU of x1y1x2y2 boxes (N, 4); flipped corners count as
    empty boxes rather than raising, so an untrained head still gets a gradient."""
    area_p = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_t = (target[:, 2] - target[:, 0]).clamp(min=0) * (target[:, 3] - target[:, 1]).clamp(min=0)
    low = torch.maximum(pred[:, :2], target[:, :2])
    high = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (high - low).clamp(min=0).prod(dim=1)
    union = area_p + area_t - inter
    iou = inter / union.clamp(min=1e-7)
    hull = torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])
    hull_area = hull.clamp(min=0).prod(dim=1)
    giou = iou - (hull_area - union) / hull_area.clamp(min=1e-7)
    return iou, giou


def box_loss(pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official stage-1 loss: 5·L1 + 2·(1 − GIoU), both averaged over the batch."""
    iou, giou = box_iou_and_giou(pred_xyxy, target_xyxy)
    l1 = F.l1_loss(pred_xyxy, target_xyxy)
    giou_loss = (1 - giou).mean()
    return {"loss": 5 * l1 + 2 * giou_loss, "l1": l1, "giou": giou_loss, "iou": iou.mean()}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class SequencePool:
    """A sliding window of rendered training sequences: after ``r`` refreshes it holds sequence
    ids r … r + size − 1 (slot = id mod size), so its content at any step is reproducible."""

    def __init__(self, settings: TrackerTrainSettings) -> None:
        self.settings = settings
        self.slots: list[tuple[list[np.ndarray], np.ndarray] | None] = [None] * settings.pool_size
        self.ids = [-1] * settings.pool_size
        self.refreshes = 0

    def _render(self, sequence_id: int) -> tuple[list[np.ndarray], np.ndarray]:
        rng = np.random.default_rng([TRAIN_SEED, self.settings.seed, sequence_id])
        changes = rng.random() < self.settings.appearance_change_share
        synth = SynthSettings(
            frames=self.settings.frames,
            appearance_change=float(rng.uniform(0.5, 1.0)) if changes else 0.0,
        )
        frames, boxes, _ = render_sequence(rng, synth)
        return frames, boxes

    def advance_to(self, step: int) -> None:
        """Bring the pool to the state it has at ``step``."""
        refreshes = step // self.settings.refresh_every
        size = self.settings.pool_size
        for sequence_id in range(refreshes, refreshes + size):
            slot = sequence_id % size
            if self.ids[slot] != sequence_id:
                self.slots[slot] = self._render(sequence_id)
                self.ids[slot] = sequence_id
        self.refreshes = refreshes

    def sequence(self, slot: int) -> tuple[list[np.ndarray], np.ndarray]:
        item = self.slots[slot]
        assert item is not None, "advance_to() fills every slot"
        return item


@dataclass
class Batch:
    """Normalised crops and padding masks of one training batch, plus the targets."""

    templates: list[tuple[torch.Tensor, torch.Tensor]]
    search: tuple[torch.Tensor, torch.Tensor]
    target_xyxy: torch.Tensor  # (B, 4) in the search crop, normalised to [0, 1]
    positive: torch.Tensor  # (B,) 1 when the search crop shows the template's target


def _normalise(crops: list[np.ndarray], masks: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std, torch.from_numpy(np.stack(masks))


def _jittered(box: np.ndarray, rng: np.random.Generator, center: float, scale: float) -> np.ndarray:
    """STARK's search-region jitter: the crop is cut around this box instead of the true one."""
    size = box[2:] * np.exp(rng.normal(0, scale, 2))
    offset = math.sqrt(float(size.prod())) * center
    middle = box[:2] + box[2:] / 2 + offset * (rng.random(2) - 0.5)
    return np.concatenate([middle - size / 2, size])


def make_batch(
    pool: SequencePool,
    settings: TrackerTrainSettings,
    template_size: int,
    search_size: int,
    rng: np.random.Generator,
    negative_share: float = 0.0,
) -> Batch:
    """Sample ``batch_size`` (static template, dynamic template, search) triplets."""
    t1, m1, t2, m2, sc, sm, targets, positive = [], [], [], [], [], [], [], []
    for _ in range(settings.batch_size):
        frames, boxes = pool.sequence(int(rng.integers(settings.pool_size)))
        n = len(frames)
        first = int(rng.integers(0, n - 1))
        search_index = int(rng.integers(first + 1, n))
        if rng.random() < settings.same_template_share:
            dynamic = first
        else:
            dynamic = int(
                rng.integers(max(first, search_index - settings.dynamic_gap), search_index)
            )
        for index, crops, masks in ((first, t1, m1), (dynamic, t2, m2)):
            crop, _, mask = sample_target(
                frames[index], boxes[index], TEMPLATE_FACTOR, template_size
            )
            crops.append(crop)
            masks.append(mask)
        is_positive = rng.random() >= negative_share
        if not is_positive:  # the search crop comes from another sequence
            frames, boxes = pool.sequence(int(rng.integers(settings.pool_size)))
            search_index = int(rng.integers(0, len(frames)))
        box = boxes[search_index]
        around = _jittered(box, rng, settings.center_jitter, settings.scale_jitter)
        crop, factor, mask = sample_target(frames[search_index], around, SEARCH_FACTOR, search_size)
        crop_side = math.ceil(math.sqrt(float(around[2] * around[3])) * SEARCH_FACTOR)
        x0 = round(around[0] + 0.5 * around[2] - crop_side * 0.5)
        y0 = round(around[1] + 0.5 * around[3] - crop_side * 0.5)
        xyxy = np.array([box[0] - x0, box[1] - y0, box[0] + box[2] - x0, box[1] + box[3] - y0])
        targets.append(np.clip(xyxy * factor / search_size, 0.0, 1.0))
        sc.append(crop)
        sm.append(mask)
        positive.append(float(is_positive))
    return Batch(
        templates=[_normalise(t1, m1), _normalise(t2, m2)],  # type: ignore[list-item]
        search=_normalise(sc, sm),  # type: ignore[arg-type]
        target_xyxy=torch.tensor(np.stack(targets), dtype=torch.float32),
        positive=torch.tensor(positive),
    )


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where a run stands; written with the weights so that it can resume."""

    step: int = 0
    history: list[dict[str, float]] | None = None


def _learning_rate(settings: TrackerTrainSettings, step: int) -> float:
    if step >= settings.box_steps:
        return settings.confidence_lr
    warm = min(1.0, (step + 1) / max(1, settings.warmup_steps))
    drop = 0.1 if step >= settings.lr_drop_at * settings.box_steps else 1.0
    return settings.lr * warm * drop


def _stage2_decoder_parameters(network: CSWinTT) -> list[torch.nn.Parameter]:
    """What stage 2 trains besides the confidence head: the decoder and its query."""
    transformer = network.transformer
    return [
        *transformer.transformer_post.parameters(),
        *transformer.post_norm.parameters(),
        *network.query_embed.parameters(),
    ]


def _start_confidence_stage(network: CSWinTT, settings: TrackerTrainSettings) -> None:
    """Fresh, seeded confidence-head weights, so stage 2 starts the same way whether it follows
    stage 1 directly or is resumed (or rerun) from the end of stage 1."""
    torch.manual_seed(settings.seed * 1_000_003 + settings.box_steps)
    for layer in network.cls_head.layers:
        layer.reset_parameters()


def _optimizer(
    network: CSWinTT, settings: TrackerTrainSettings, stage: int
) -> torch.optim.Optimizer:
    """AdamW; in stage 2 two groups: the confidence head (lr) and the decoder (lr / 10)."""
    if stage == 1:
        params = [p for p in network.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    groups = [
        {"params": list(network.cls_head.parameters()), "scale": 1.0},
        {"params": _stage2_decoder_parameters(network), "scale": 0.1},
    ]
    return torch.optim.AdamW(groups, lr=settings.confidence_lr, weight_decay=settings.weight_decay)


def settings_from_dict(data: dict[str, Any]) -> TrackerTrainSettings:
    known = {f.name for f in fields(TrackerTrainSettings)}
    return TrackerTrainSettings(**{k: v for k, v in data.items() if k in known})


def _stage_step(
    network: CSWinTT, batch: Batch, stage: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch: boxes in stage 1, confidence in stage 2."""
    if stage == 1:
        out = network(batch.templates, batch.search)
        parts = box_loss(cxcywh_to_xyxy(out["pred_boxes"][:, 0]), batch.target_xyxy)
        return parts["loss"], {k: float(v.detach()) for k, v in parts.items()}
    with torch.no_grad():
        features = [network.forward_backbone(*image) for image in [*batch.templates, batch.search]]
        merged = network.merge(features)
        memory = network.forward_encoder(merged.tokens, merged.padding_mask)
    decoded = network.forward_decoder(memory, merged.padding_mask)
    pred = cxcywh_to_xyxy(network.forward_box_head(memory, decoded)[:, 0])
    iou, _ = box_iou_and_giou(pred.detach(), batch.target_xyxy)
    label = batch.positive * (iou > 0.5).float()
    logit = network.forward_confidence(decoded)[:, 0]
    bce = F.binary_cross_entropy_with_logits(logit, label)
    positive = batch.positive.bool()
    boxes = box_loss(pred[positive], batch.target_xyxy[positive])["loss"]
    loss = bce + boxes if positive.any() else bce
    accuracy = ((logit > 0).float() == label).float().mean()
    return loss, {
        "loss": float(loss.detach()),
        "bce": float(bce.detach()),
        "box_loss": float(boxes.detach()) if positive.any() else 0.0,
        "accuracy": float(accuracy),
        "positives": float(label.mean()),
    }


@keeps_global_rng
def train_tracker(
    out: str | Path,
    settings: TrackerTrainSettings | None = None,
    resume: bool = True,
    checkpoint_every: int = 100,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train (or resume training) and write ``out/checkpoint.pth`` (full state, every
    ``checkpoint_every`` steps) and, at the end, ``out/weights.pth`` (bare state_dict) with
    ``out/weights.json`` (settings, final losses). Returns the weights path."""
    settings = settings or TrackerTrainSettings()
    settings.validate()
    check_file_targets(out, ("checkpoint.pth", "weights.pth", "weights.json"))
    with locked_folder(out), torch_threads(settings.threads):
        return _train(Path(out), settings, resume, checkpoint_every, on_step)


def _train(
    out: Path,
    settings: TrackerTrainSettings,
    resume: bool,
    checkpoint_every: int,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> Path:
    checkpoint_path = out / "checkpoint.pth"
    network = build_cswintt(settings.config, dropout=settings.dropout)
    config = network.config
    state = TrainState(step=0, history=[])
    saved: dict[str, Any] | None = None
    if resume and checkpoint_path.is_file():
        saved = read_torch_file(checkpoint_path, "training checkpoint")
        if not isinstance(saved, dict) or "settings" not in saved:
            raise InputError(f"{checkpoint_path} is not a tracker training checkpoint")
        stored = settings_from_dict(saved["settings"])
        if replace(stored, threads=settings.threads) != settings:
            raise InputError(
                f"{checkpoint_path} was written with other settings; use another folder or "
                "--no-resume to start over"
            )
        network.load_state_dict(saved["net"])
        state = TrainState(step=int(saved["step"]), history=list(saved["history"]))
    stage = 1 if state.step < settings.box_steps else 2
    if stage == 2 and (saved is None or saved.get("stage") != 2):
        _start_confidence_stage(network, settings)
    optimizer = _optimizer(network, settings, stage)
    if saved is not None and saved.get("stage") == stage:
        optimizer.load_state_dict(saved["optimizer"])
    pool = SequencePool(settings)
    history = state.history if state.history is not None else []

    def save(step: int) -> None:
        atomic_torch_save(
            checkpoint_path,
            {
                "net": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "stage": stage,
                "step": step,
                "history": history,
                "settings": asdict(settings),
            },
        )

    for step in range(state.step, settings.total_steps):
        if step == settings.box_steps and stage == 1:
            stage = 2
            _start_confidence_stage(network, settings)
            optimizer = _optimizer(network, settings, stage)
        pool.advance_to(step)
        rng = np.random.default_rng([settings.seed, 17, step])
        torch.manual_seed(settings.seed * 1_000_003 + step)
        batch = make_batch(
            pool,
            settings,
            config.template_size,
            config.search_size,
            rng,
            negative_share=0.5 if stage == 2 else 0.0,
        )
        network.train()
        if stage == 2:
            network.eval()  # frozen parts keep their batch-norm statistics (no dropout: 0)
            network.cls_head.train()
            network.transformer.transformer_post.train()
        lr = _learning_rate(settings, step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("scale", 1.0)
        loss, metrics = _stage_step(network, batch, stage)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trained = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(trained, settings.grad_clip)
        optimizer.step()
        if not math.isfinite(metrics["loss"]):
            raise InputError(
                f"training diverged at step {step} (loss {metrics['loss']}); train again with "
                "a lower --lr"
            )
        metrics = {"step": float(step), "stage": float(stage), "lr": lr, **metrics}
        history.append(metrics)
        if on_step is not None:
            on_step(step, metrics)
        if (step + 1) % checkpoint_every == 0 or step + 1 == settings.total_steps:
            save(step + 1)
    if settings.total_steps == 0 or state.step < settings.total_steps:
        save(settings.total_steps)
    network.eval()
    weights = out / "weights.pth"
    atomic_torch_save(weights, network.state_dict())
    atomic_write_text(
        out / "weights.json",
        json.dumps(
            {"settings": asdict(settings), "train_seed": TRAIN_SEED, "final": _summary(history)},
            indent=2,
        ),
    )
    return weights


def _summary(history: list[dict[str, float]], last: int = 100) -> dict[str, float]:
    """Mean of the last ``last`` steps of each stage."""
    summary: dict[str, float] = {}
    for stage in (1, 2):
        rows = [row for row in history if row["stage"] == stage][-last:]
        for key in sorted({k for row in rows for k in row} - {"step", "stage", "lr"}):
            summary[f"stage{stage}_{key}"] = float(np.mean([row[key] for row in rows]))
    return summary
