"""Every model transform of headway over real torchvision and timm models: the table
model × transform × largest output difference (relative to the output's size), or the reason
the transform refused. Nothing may be silently wrong: each entry is exact (≤ 1e-4 relative) or
refused by name.

Needs torchvision and timm (not in ``make test``'s set-up; e.g. a separate environment with
``torch==2.14.1 torchvision==0.29.1 timm==1.0.31`` and headway's ``src`` on ``PYTHONPATH``).
Random weights, eval mode, CPU.

    PYTHONPATH=src python benchmarks/real_models.py [--json real_models.json]

``--accelerate`` instead runs ``headway.accelerate`` with an agreement budget (issue 33) on
resnet50, mobilenet_v3_large, efficientnet_b0 (timm) and deit_tiny (timm): data is synthetic
smooth images (nothing is downloaded), scored as agreement with the model's own top-1 after the
logits' mean over the data is taken away (random weights answer one class for every image
otherwise, see :func:`centred_top1`), batch 1. The table is the chosen candidate, its speed ×
the best exact path and × eager, the drop, and how many candidates were tried in what time.

    PYTHONPATH=src python benchmarks/real_models.py --accelerate [--max-drop 0.01]
        [--budget 240] [--json accelerate_real.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable

import torch
from torch import nn

from headway.errors import InputError
from headway.runtime.jobs import split_jobs
from headway.transforms.fold import fold_batchnorm, is_batch_norm
from headway.transforms.tucker import _skip_reason, decompose_model, tucker2_conv

EXACT = 1e-4


def torchvision_models() -> dict[str, Callable[[], nn.Module]]:
    from torchvision import models
    from torchvision.ops.misc import FrozenBatchNorm2d

    names = ["resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
             "densenet121", "regnet_y_400mf", "inception_v3", "vit_b_16", "swin_t"]  # fmt: skip
    built = {f"tv:{n}": (lambda n=n: models.get_model(n, weights=None)) for n in names}
    built["tv:resnet50(frozen bn)"] = lambda: models.resnet50(norm_layer=FrozenBatchNorm2d)
    built["tv:resnet18(sync bn)"] = lambda: nn.SyncBatchNorm.convert_sync_batchnorm(
        models.resnet18()
    )
    return built


def timm_models() -> dict[str, Callable[[], nn.Module]]:
    import timm

    names = ["resnet50", "efficientnet_b0", "mobilenetv3_large_100", "tf_efficientnetv2_b0",
             "vit_small_patch16_224", "deit_tiny_patch16_224"]  # fmt: skip
    built = {f"timm:{n}": (lambda n=n: timm.create_model(n, pretrained=False)) for n in names}
    built["timm:vit_small(post-norm)"] = lambda: timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        block_fn=timm.models.vision_transformer.ResPostBlock,
    )
    return built


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Norm statistics that matter (fresh ones are the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if is_batch_norm(module) and getattr(module, "running_var", None) is not None:
            size = module.running_var.shape
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            if isinstance(module.weight, torch.Tensor):
                module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
    return model.eval()


def relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max().clamp(min=1e-12))


def logits(value: object) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else value[0]  # inception's aux tuple


def check_fold(model: nn.Module, x: torch.Tensor) -> str:
    folded, report = fold_batchnorm(model)
    with torch.no_grad():
        diff = relative(logits(folded(x)), logits(model(x)))
    left = f", {len(report.skipped)} left and named" if report.skipped else ""
    verdict = "exact" if diff <= EXACT else "WRONG"
    return f"{verdict} {diff:.1e} ({report.layers} folded{left})"


def check_split(model: nn.Module, x: torch.Tensor) -> str:
    try:
        jobs = split_jobs(model, "jobs:4", x)
    except InputError as error:
        return f"refused: {error}"
    with torch.no_grad():
        out = x
        for job in jobs:
            out = job(out)
        diff = relative(logits(out), logits(model(x)))
    return f"{'exact' if diff <= EXACT else 'WRONG'} {diff:.1e} ({len(jobs)} jobs)"


def check_tucker(model: nn.Module, x: torch.Tensor) -> str:
    """Full ranks must reproduce the model (the machinery is exact); ratio:0.5 must run."""
    try:
        decomposed, report = decompose_model(model, x, "ratio:0.5", min_rank=1)
        with torch.no_grad():
            decomposed(x)
    except InputError as error:
        return f"refused: {error}"
    full = copy.deepcopy(model)
    replaced = 0
    for name, conv in list(full.named_modules()):
        if isinstance(conv, nn.Conv2d) and _skip_reason(conv) is None:
            full.set_submodule(name, tucker2_conv(conv, conv.in_channels, conv.out_channels))
            replaced += 1
    with torch.no_grad():
        diff = relative(logits(full(x)), logits(model(x)))
    skipped = sum(1 for row in report.layers if row.status == "skipped")
    verdict = "exact" if diff <= 1e-3 else "WRONG"  # HOOI at full rank: SVD rounding
    return f"{verdict} at full rank {diff:.1e} ({replaced} convs; ratio:0.5 ran, {skipped} skipped)"


def smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Images with structure at several scales (upsampled noise), normalised like ImageNet
    inputs: random weights answer them with more than one class, unlike flat noise."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 3, size, size)
    for cells in (4, 16, 56):
        coarse = torch.randn(count, 3, cells, cells, generator=generator)
        images += nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return images / 1.7


def centred_top1(outputs: torch.Tensor) -> torch.Tensor:
    """Each image's top-1 after the logits' mean over the data is taken away: random-weight
    CNNs answer every image with the same class (a bias dominates), so their plain top-1
    agreement is trivially 1; centred, they answer dozens of classes."""
    return (outputs - outputs.mean(0, keepdim=True)).argmax(1)


def centred_agreement(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose centred top-1 is the original model's centred top-1."""
    return float((centred_top1(outputs) == labels).float().mean())


def accelerate_rows(max_drop: float, budget: float) -> list[dict[str, object]]:
    import warnings

    import headway

    models = {**torchvision_models(), **timm_models()}
    chosen = ["tv:resnet50", "tv:mobilenet_v3_large", "timm:efficientnet_b0",
              "timm:deit_tiny_patch16_224"]  # fmt: skip
    rows: list[dict[str, object]] = []
    for name in chosen:
        model = randomise(models[name](), seed=1)
        images = [smooth_images(16, 224, seed) for seed in range(8)]
        with torch.inference_mode():
            reference = torch.cat([logits(model(x)) for x in images])
        labels = centred_top1(reference)
        answered = int(labels.unique().numel())
        data = [(x, y) for x, y in zip(images, labels.split(16), strict=True)]
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = headway.accelerate(model, images[0][:1], data=data, max_drop=max_drop,
                                      metric=centred_agreement, budget_s=budget)  # fmt: skip
        seconds = time.perf_counter() - began
        frontier = fast.report.frontier
        pick = next(r for r in frontier.rows if r.status == "chosen")
        tried = [r for r in frontier.rows if r.status != "not tried" and r.kind != "exact"]
        rows.append({
            "model": name, "classes_answered": answered, "chosen": frontier.chosen, "way": pick.way,
            "vs_exact": pick.vs_exact, "vs_eager": pick.vs_eager, "drop": pick.drop,
            "tried": len(tried), "candidates": len(frontier.rows) - 1, "seconds": seconds,
            "frontier": frontier.to_json(),
        })  # fmt: skip
        header, table = frontier.table()
        print(f"{name} ({seconds:.0f} s):\n  " + " | ".join(header))
        for cells in table:
            print("  " + " | ".join(cells))
    print("| model | classes answered | chosen | × best exact | × eager | agreement drop | tried "
          "| search |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['model']} | {row['classes_answered']} of {16 * 8} images "
              f"| {row['chosen']} ({row['way']}) | {row['vs_exact']:.2f}× | "
              f"{row['vs_eager']:.2f}× | {100 * row['drop']:.2f} points | "
              f"{row['tried']} of {row['candidates']} | {row['seconds']:.0f} s |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the table here")
    parser.add_argument("--accelerate", action="store_true", help="accelerate with a budget")
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--budget", type=float, default=240.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.accelerate:
        found = accelerate_rows(args.max_drop, args.budget)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump({"torch": torch.__version__, "rows": found}, handle, indent=2)
        return
    rows = []
    for name, build in {**torchvision_models(), **timm_models()}.items():
        began = time.perf_counter()
        model = randomise(build(), seed=1)
        size = 299 if "inception" in name else 224
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
        row = {"model": name}
        for transform, check in (("fold", check_fold), ("split", check_split),
                                 ("tucker", check_tucker)):  # fmt: skip
            try:
                row[transform] = check(model, x)
            except Exception as error:  # a traceback here is itself a finding
                row[transform] = f"CRASH {type(error).__name__}: {str(error).splitlines()[0]}"
        if "vit" in name or "deit" in name:
            from headway.models.deit import adopt_vit

            try:
                adopted = adopt_vit(model).eval()
                with torch.no_grad():
                    row["adopt_vit"] = f"exact {relative(adopted(x), model(x)):.1e}"
            except InputError as error:
                row["adopt_vit"] = f"refused: {error}"
        rows.append(row)
        print(f"{name}: done in {time.perf_counter() - began:.0f} s", flush=True)
    columns = ["model", "fold", "split", "tucker", "adopt_vit"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row.get(c, "") for c in columns) + " |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"torch": torch.__version__, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
