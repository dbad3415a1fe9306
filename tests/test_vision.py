"""Classification data readers and the training loop (checkpoint, resume)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from headway.errors import InputError
from headway.vision.data import ClassificationData, digits, load_cifar10, load_image_folder
from headway.vision.train import TrainSettings, evaluate, train


def test_digits_built_in() -> None:
    data = digits(size=16)
    assert data.num_classes == 10
    assert data.train_images.shape[1:] == (3, 16, 16)
    assert len(data.train_labels) + len(data.test_labels) == 1797
    assert abs(float(data.train_images.mean())) < 1e-3
    again = digits(size=16)
    assert torch.equal(data.test_labels, again.test_labels)


def test_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    data = load_image_folder(tmp_path, size=8, test_fraction=0.34)
    assert data.classes == ["cat", "dog"]
    assert data.train_images.shape[1:] == (3, 8, 8)
    assert len(data.train_labels) + len(data.test_labels) == 6
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"broken\.png: cannot be read"):
        load_image_folder(tmp_path)
    with pytest.raises(InputError, match="one sub-folder per class"):
        load_image_folder(tmp_path / "cat")


def test_a_limit_reads_only_a_sample_of_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``limit``: a seeded sample chosen before reading (headway accelerate keeps 4096 of a
    folder that may hold a whole validation set), every class still present."""
    from headway.vision import data as module
    from headway.vision.data import load_imagenet_folder

    rng = np.random.default_rng(2)
    for name in ("0", "1", "2"):
        (tmp_path / name).mkdir()
        for i in range(10):
            pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    opened: list[str] = []
    real_open = module.Image.open
    monkeypatch.setattr(module.Image, "open", lambda p: opened.append(str(p)) or real_open(p))
    data = load_image_folder(tmp_path, size=8, limit=12)
    assert len(opened) == 12 and len(data.train_labels) + len(data.test_labels) == 12
    assert set(torch.cat([data.train_labels, data.test_labels]).tolist()) == {0, 1, 2}
    opened.clear()
    pretrained = load_imagenet_folder(tmp_path, size=8, limit=9)
    assert len(opened) == 9 and len(pretrained.train_labels) + len(pretrained.test_labels) == 9
    again = load_imagenet_folder(tmp_path, size=8, limit=9)
    assert torch.equal(again.test_images, pretrained.test_images)  # the same sample


def test_cifar10_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for name, count in (("data_batch_1", 6), ("data_batch_2", 4), ("test_batch", 5)):
        batch = {
            b"data": rng.integers(0, 255, (count, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, count)),
        }
        with (tmp_path / name).open("wb") as file:
            pickle.dump(batch, file)
    data = load_cifar10(tmp_path)
    assert data.train_images.shape == (10, 3, 32, 32) and data.test_images.shape[0] == 5
    (tmp_path / "test_batch").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a CIFAR-10 python batch"):
        load_cifar10(tmp_path)
    with pytest.raises(InputError, match="no data_batch"):
        load_cifar10(tmp_path / "absent")


def separable_data() -> ClassificationData:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (128,), generator=generator)
    images = torch.randn(128, 3, 8, 8, generator=generator) * 0.3
    images[:, 0] += labels.view(-1, 1, 1) * 2.0 - 1.0
    return ClassificationData(images[:96], labels[:96], images[96:], labels[96:], ["a", "b"])


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def test_training_learns_and_resumes(tmp_path: Path) -> None:
    data = separable_data()
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.05, shift=1)
    model = small_net()
    checkpoint = tmp_path / "net.pt"
    result = train(model, data, settings, checkpoint, show_progress=False)
    assert result.test_accuracy > 90
    assert evaluate(model, data.test_images, data.test_labels) == result.test_accuracy
    resumed = small_net()
    again = train(resumed, data, settings, checkpoint, show_progress=False)
    assert len(again.history) == 3  # nothing left to do: weights come from the checkpoint
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(InputError, match="other settings"):
        train(small_net(), data, TrainSettings(epochs=4), checkpoint, show_progress=False)
    with pytest.raises(InputError, match="unknown optimizer"):
        train(small_net(), data, TrainSettings(optimizer="lion"), show_progress=False)
