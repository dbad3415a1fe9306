"""Image-classification datasets as (images, labels) tensors.

- :func:`digits` — the built-in data: scikit-learn's 1,797 handwritten digits (8×8, shipped
  with the package, so nothing is downloaded), upscaled to RGB squares; split deterministically.
- :func:`load_image_folder` — ``root/<class>/<image>`` folders (class names sorted).
- :func:`load_imagenet_folder` — ``root/<class>/<image>`` labelled with a pretrained model's
  class indices, preprocessed the way DeiT's checkpoints were evaluated (resize, centre crop,
  ImageNet mean/std).
- :func:`load_cifar10` — the CIFAR-10 "python version" batches (``data_batch_1..5``,
  ``test_batch``).
The first three return float images normalised per channel with the training split's
statistics.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from headway.errors import InputError
from headway.io import read_text_file, require_folder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


@dataclass
class ClassificationData:
    """Train and test tensors: images (N, 3, H, W) float, labels (N,) int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _normalise(data: ClassificationData) -> ClassificationData:
    mean = data.train_images.mean(dim=(0, 2, 3), keepdim=True)
    std = data.train_images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    data.train_images = (data.train_images - mean) / std
    data.test_images = (data.test_images - mean) / std
    return data


def _split(
    images: torch.Tensor, labels: torch.Tensor, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = len(labels) - round(test_fraction * len(labels))
    train, test = order[:cut], order[cut:]
    return images[train], labels[train], images[test], labels[test]


def digits(size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> ClassificationData:
    """scikit-learn's handwritten digits as size×size RGB images (10 classes)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    split = _split(images, labels, test_fraction, seed)
    return _normalise(ClassificationData(*split, [str(i) for i in range(10)]))


def _image_files(
    root: Path, folders: Sequence[str], label_of: Callable[[str], int], limit: int | None, seed: int
) -> list[tuple[Path, int]]:
    """``(path, label)`` of every image under ``root/<folder>``; with ``limit``, a seeded random
    ``limit`` of them (every class keeps about its share), chosen before any is read."""
    files = [
        (path, label_of(folder))
        for folder in folders
        for path in sorted((root / folder).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if limit is not None and len(files) > limit:
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))
        files = [files[i] for i in sorted(order[:limit].tolist())]
    return files


def load_image_folder(
    root: str | Path,
    size: int = 32,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
) -> ClassificationData:
    """``root/<class>/*.jpg|png...``; each image resized to size×size RGB (``limit``: at most
    that many images, a seeded sample chosen before reading)."""
    root = Path(root)
    require_folder(root, "image folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise InputError(f"{root}: expected one sub-folder per class, found {len(classes)}")
    images, labels = [], []
    for path, index in _image_files(root, classes, classes.index, limit, seed):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
        except (UnidentifiedImageError, OSError) as error:
            raise InputError(f"{path}: cannot be read as an image ({error})") from None
        images.append(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
        labels.append(index)
    if not images:
        raise InputError(f"{root}: no images found")
    tensor = torch.stack(images).float() / 255.0
    split = _split(tensor, torch.tensor(labels), test_fraction, seed)
    return _normalise(ClassificationData(*split, classes))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _class_indices(root: Path, folders: list[str], class_map: Path | None) -> dict[str, int]:
    """Folder name → output index: the line number in ``class_map`` (one name per line, in the
    model's output order, e.g. ImageNet's sorted WordNet ids), or the folder name itself when
    it is an integer."""
    if class_map is not None:
        if not class_map.is_file():
            raise InputError(f"{class_map}: class map file does not exist")
        text = read_text_file(class_map, "class map")
        names = [line.split()[0] for line in text.splitlines() if line.strip()]
        order = {name: index for index, name in enumerate(names)}
        missing = [f for f in folders if f not in order]
        if missing:
            raise InputError(f"{root}: folders {missing[:5]} are not in the class map {class_map}")
        return {f: order[f] for f in folders}
    if not all(f.isdigit() for f in folders):
        raise InputError(
            f"{root}: name the class folders by the model's class index (0, 1, …) or pass a "
            "class map (one folder name per line, in the model's output order)"
        )
    return {f: int(f) for f in folders}


def load_imagenet_folder(
    root: str | Path,
    class_map: str | Path | None = None,
    size: int = 224,
    crop_fraction: float = 0.875,
    calibration_fraction: float = 0.5,
    seed: int = 0,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    limit: int | None = None,
) -> ClassificationData:
    """Images for a pretrained classifier: shorter side resized (bicubic) to
    size / crop_fraction, centre-cropped to size, normalised by the weights' ``mean``/``std``
    (ImageNet's by default), or each RGB image through ``transform`` (a timm model's own eval
    transform: its crop fraction, interpolation and normalisation). The "train" split is the
    calibration part (e.g. for averaging attention maps), the "test" split is scored.
    ``limit``: at most that many images, a seeded sample chosen before any is read."""
    root = Path(root)
    require_folder(root, "image folder")
    if not 0.0 < calibration_fraction < 1.0:
        raise InputError(f"calibration fraction must be in (0, 1), got {calibration_fraction}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(f"{root}: expected one sub-folder per class, found none")
    indices = _class_indices(root, folders, Path(class_map) if class_map else None)
    resized = round(size / crop_fraction)
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    images, labels = [], []
    for path, label in _image_files(root, folders, indices.__getitem__, limit, seed):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
                if transform is not None:
                    images.append(transform(rgb))
                    labels.append(label)
                    continue
                scale = resized / min(rgb.size)
                width, height = (max(size, round(v * scale)) for v in rgb.size)
                rgb = rgb.resize((width, height), Image.BICUBIC)
                left, top = (width - size) // 2, (height - size) // 2
                rgb = rgb.crop((left, top, left + size, top + size))
        except (UnidentifiedImageError, OSError) as error:
            raise InputError(f"{path}: cannot be read as an image ({error})") from None
        pixels = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 255.0
        images.append((pixels - mean_t) / std_t)
        labels.append(label)
    if len(images) < 2:
        raise InputError(f"{root}: need at least 2 images (calibration and scoring)")
    split = _split(torch.stack(images), torch.tensor(labels), 1.0 - calibration_fraction, seed)
    return ClassificationData(*split, folders)


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"{path}: CIFAR-10 batch is missing")
    try:
        with path.open("rb") as file:
            batch = pickle.load(file, encoding="bytes")  # the format is a pickle by definition
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as error:
        raise InputError(f"{path}: not a CIFAR-10 python batch ({error})") from None
    return torch.from_numpy(data).float() / 255.0, torch.from_numpy(labels)


def load_cifar10(root: str | Path) -> ClassificationData:
    """The CIFAR-10 python batches in ``root`` (``data_batch_1``… and ``test_batch``)."""
    root = Path(root)
    train_files = sorted(root.glob("data_batch_*"))
    if not train_files:
        raise InputError(f"{root}: no data_batch_* files (CIFAR-10 python version)")
    parts = [_read_cifar_batch(p) for p in train_files]
    test_images, test_labels = _read_cifar_batch(root / "test_batch")
    names = [f"class{i}" for i in range(10)]
    meta = root / "batches.meta"
    if meta.is_file():
        with meta.open("rb") as file:
            names = [n.decode() for n in pickle.load(file, encoding="bytes")[b"label_names"]]
    data = ClassificationData(
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        test_images,
        test_labels,
        names,
    )
    return _normalise(data)
