"""A compact training / fine-tuning loop for classifiers: SGD with momentum and a cosine
schedule, random-shift augmentation, a checkpoint after every epoch (written atomically) and
resume from it, and a progress bar."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from headway.errors import InputError
from headway.io import atomic_torch_save, read_torch_file
from headway.models.checkpoint import check_state_dict
from headway.vision.data import ClassificationData


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    shift: int = 2  # random translation in pixels (0 = no augmentation)
    seed: int = 0
    optimizer: str = "sgd"  # or "adam" (lr ~1e-3), steadier for nets without batch norm


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def test_accuracy(self) -> float:
        return self.history[-1]["test_accuracy"] if self.history else float("nan")


def _logits(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> float:
    """Top-1 accuracy in percent."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = _logits(model(images[start : start + batch_size]))
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    model.train(was_training)
    return 100.0 * correct / max(len(labels), 1)


def _random_shift(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    if shift <= 0:
        return images
    padded = F.pad(images, (shift,) * 4, mode="replicate")
    dx, dy = (int(v) for v in torch.randint(0, 2 * shift + 1, (2,), generator=generator))
    return padded[..., dy : dy + images.shape[-2], dx : dx + images.shape[-1]]


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW (``adam``) or SGD with Nesterov momentum (``sgd``), as ``settings`` say."""
    if settings.optimizer == "adam":
        return torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=True,
        )
    raise InputError(f"unknown optimizer {settings.optimizer!r}: use sgd or adam")


def train(
    model: nn.Module,
    data: ClassificationData,
    settings: TrainSettings | None = None,
    checkpoint: str | Path | None = None,
    show_progress: bool = True,
    description: str = "training",
) -> TrainResult:
    """Train ``model`` in place; with ``checkpoint``, resume from it if present and save to it
    after every epoch (an interrupted run loses at most the epoch in progress)."""
    settings = settings or TrainSettings()
    if settings.epochs < 0 or settings.batch_size < 1:
        raise InputError("epochs must be ≥ 0 and batch size ≥ 1")
    optimizer = _optimizer(model, settings)
    steps_per_epoch = -(-len(data.train_labels) // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.lr,
        total_steps=max(1, settings.epochs * steps_per_epoch),
        pct_start=0.15,
        cycle_momentum=settings.optimizer == "sgd",
    )
    result = TrainResult()
    first_epoch = 0
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.is_file():
        state = read_torch_file(path, "training checkpoint")
        if not isinstance(state, dict) or state.get("settings") != asdict(settings):
            raise InputError(f"{path}: checkpoint was made with other settings; remove it first")
        check_state_dict(model, state["model"], str(path))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        result.history = list(state["history"])
        first_epoch = int(state["epoch"]) + 1
    generator = torch.Generator().manual_seed(settings.seed + first_epoch)
    began = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show_progress, transient=True) as progress:
        task = progress.add_task(
            description, total=(settings.epochs - first_epoch) * steps_per_epoch, info=""
        )
        for epoch in range(first_epoch, settings.epochs):
            model.train()
            order = torch.randperm(len(data.train_labels), generator=generator)
            total_loss = 0.0
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                images = _random_shift(data.train_images[batch], settings.shift, generator)
                output = model(images)
                labels = data.train_labels[batch]
                if isinstance(output, tuple) and output[1] is not None:  # Inception aux head
                    loss = F.cross_entropy(output[0], labels) + 0.4 * F.cross_entropy(
                        output[1], labels
                    )
                else:
                    loss = F.cross_entropy(_logits(output), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_loss += float(loss.detach()) * len(batch)
                progress.update(
                    task, advance=1, info=f"epoch {epoch + 1} loss {float(loss.detach()):.3f}"
                )
            accuracy = evaluate(model, data.test_images, data.test_labels)
            result.history.append(
                {"epoch": epoch + 1, "loss": total_loss / len(order), "test_accuracy": accuracy}
            )
            if path is not None:
                atomic_torch_save(
                    path,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "history": result.history,
                        "settings": asdict(settings),
                    },
                )
    result.seconds = time.perf_counter() - began
    model.eval()
    return result
