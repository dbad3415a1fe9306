"""``headway.accelerate`` with an accuracy budget on models trained here (issue 33): the
built-in digits VGG-16-BN (width 0.25) or ResNet-50 (width 16), as ``compress accuracy``
trains them, or the digits DeiT that ``vit accuracy`` trains, accelerated with ``max_drop``
on its training images (a quarter held out for scoring when fine-tuning), then checked on the
held-out test digits. Prints the frontier table and the held-out drop; writes JSON and the
frontier plot.

    python benchmarks/accelerate_budget.py --out /tmp/budget [--model vgg16_bn]
        [--max-drop 0.01] [--fine-tune 120] [--budget 240] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

import headway
from headway.experiments.tucker import ACCURACY_MODELS
from headway.experiments.vit import trained_digits_deit
from headway.models import create_model
from headway.vision.data import digits
from headway.vision.train import train

MODELS = ("vgg16_bn", "resnet50", "deit_digits")


def _accuracy(run: torch.nn.Module, batches: list) -> float:
    with torch.inference_mode():
        right = sum(int((run(x).argmax(1) == y).sum()) for x, y in batches)
    return right / sum(len(y) for _, y in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", choices=MODELS, default="vgg16_bn")
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--fine-tune", type=int, default=120)
    parser.add_argument("--budget", type=float, default=240.0)
    parser.add_argument("--batch", type=int, default=64, help="example batch size timed")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.model == "deit_digits":
        model, data = trained_digits_deit(args.out)
    else:
        data = digits()
        overrides, settings, _ = ACCURACY_MODELS[args.model]
        model = create_model(args.model, num_classes=10, small_input=True, **overrides)
        train(model, data, settings, args.out / f"{args.model}.pt")
    model.eval()

    def batches(images: torch.Tensor, labels: torch.Tensor) -> list:
        return [(images[i : i + 64], labels[i : i + 64]) for i in range(0, len(labels), 64)]

    tune = batches(data.train_images, data.train_labels)
    held = batches(data.test_images, data.test_labels)
    example = data.test_images[: args.batch]
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = headway.accelerate(
            model,
            example,
            data=tune,
            max_drop=args.max_drop,
            fine_tune=args.fine_tune or None,
            budget_s=args.budget,
        )
    seconds = time.perf_counter() - began
    frontier = fast.report.frontier
    header, rows = frontier.table()
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))
    before, after = _accuracy(model, held), _accuracy(fast, held)
    chosen = next(r for r in frontier.rows if r.status == "chosen")
    print(
        f"chose {frontier.chosen} ({chosen.vs_exact:.2f}× the best exact path, "
        f"{chosen.vs_eager:.2f}× eager) in {seconds:.0f} s; held-out top-1 {before:.4f} → "
        f"{after:.4f} (drop {before - after:+.4f})"
    )
    frontier.plot(args.out / "frontier.png")
    record = {
        "frontier": frontier.to_json(),
        "held_out_before": before,
        "held_out_after": after,
        "seconds": seconds,
        "batch": args.batch,
        "model": args.model,
    }
    (args.out / "accelerate_budget.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
