"""``headway.accelerate(..., data=, max_drop=)``: papers B's and C's approximate methods on the
user's own model, each scored on the user's data, and the fastest whose metric stays within
``max_drop`` of the module's own is returned (issue 33).

The candidates, in the order of the speed they can win (fewest MACs / tokens first):

- **Tucker-2** on the convolutions (:func:`headway.transforms.tucker.decompose_model`) at a
  ladder of rank rules, ``macs:0.19`` … ``energy:0.95``; for any module with eligible
  convolutions (torchvision's and timm's included).
- **Static sparse attention masks + token pruning** (paper C) for any ViT that
  :func:`headway.models.deit.adopt_vit` takes: masks from the attention averaged over
  ``data``, at a ladder of sparsities and pruning schedules.
- **INT8** post-training quantization with NNCF on OpenVINO (:mod:`headway.runtime.int8`),
  calibrated on ``data``: of the module itself (tried first: the cheapest), and of every
  float candidate above that keeps the budget (Tucker-2 + INT8, masks + pruning + INT8).
  Without NNCF these rows say how to install it.

Each candidate is optionally fine-tuned (``fine_tune`` steps of cross-entropy on ``data``, as
paper B retrains after decomposing: it needs labels), scored with ``metric``, and, if its drop
is within ``max_drop``, given to the exact tuning loop (:func:`headway.accelerate`) for the
fastest exact way to run it. The module's best exact way and every admissible candidate's
are then timed interleaved in one process, and the fastest is chosen. A budget of ``max_drop=0``
returns the exact path. Every candidate has a row in the report: speed × eager, speed × the
best exact path, metric, drop, and chosen or why not; :meth:`FrontierReport.plot` draws the
speed/accuracy frontier.

The decision is cached (``cache_root()/frontiers``, keyed by the weights, the data's digest and
the settings): a second call rebuilds the chosen candidate only and scores it again.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headway.errors import InputError, NotApplicable, first_line
from headway.runtime.int8 import WAY as INT8_WAY
from headway.runtime.int8 import int8_missing, quantize, require_int8
from headway.tuning import TuningPlan, call_ms, time_interleaved

Metric = Callable[[torch.Tensor, torch.Tensor], float]

TUCKER_LADDER = ("macs:0.19", "macs:0.35", "macs:0.5", "vbmf", "energy:0.95")
# (attention sparsity, pruned share rising from → to, or None): the strongest first
VIT_LADDER = (
    (0.7, (0.5, 0.9)),
    (0.7, (0.1, 0.9)),
    (0.5, (0.1, 0.5)),
    (0.3, (0.05, 0.3)),
    (0.5, None),
)
EXACT_SHARE = 0.35  # of the budget, for the module's own exact tuning
MAX_BATCHES = 64  # data batches kept (scoring every candidate on each)
WAY_BUDGET_S = 8.0  # building, checking and timing an admissible candidate on the exact way


@dataclass
class FrontierRow:
    """One candidate: what it is, its metric and drop, and its speed (or why it has none)."""

    name: str
    kind: str  # exact, tucker2, vit-sparse, int8, tucker2+int8, vit-sparse+int8
    status: str  # chosen, within budget, over budget, failed, not tried, not applicable
    reason: str = ""
    metric: float | None = None
    drop: float | None = None
    way: str | None = None  # the exact way chosen to run it
    median_ms: float | None = None
    vs_eager: float | None = None
    vs_exact: float | None = None
    macs: int | None = None
    fine_tuned_from: float | None = None  # its metric before fine-tuning


@dataclass
class FrontierReport:
    """How :func:`accelerate_within` chose: every candidate's speed and metric."""

    metric: str
    baseline: float
    max_drop: float
    chosen: str
    eager_ms: float | None
    exact_ms: float | None
    tune_s: float
    fine_tune: int | None
    rows: list[FrontierRow] = field(default_factory=list)
    cached: bool = False  # the decision of an earlier call on the same model, data and budget

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FrontierReport:
        fields = dict(data)
        fields["rows"] = [FrontierRow(**row) for row in fields.get("rows", [])]
        return cls(**fields)

    def table(self) -> tuple[list[str], list[list[str]]]:
        header = ["candidate", "status", "× eager", "× best exact", self.metric, "drop", "way"]
        rows = []
        for r in self.rows:
            rows.append(
                [
                    r.name,
                    r.status + (f": {r.reason}" if r.reason else ""),
                    f"{r.vs_eager:.2f}×" if r.vs_eager else "",
                    f"{r.vs_exact:.2f}×" if r.vs_exact else "",
                    "" if r.metric is None else f"{r.metric:.4f}",
                    "" if r.drop is None else f"{r.drop:+.4f}",
                    r.way or "",
                ]
            )
        return header, rows

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def plot(self, path: str | Path) -> Path:
        """The speed/accuracy frontier: each scored candidate at (speed × eager, metric), the
        budget's floor, the chosen one marked; written atomically as PNG (or the suffix's
        format)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from headway.io import save_figure

        figure, axes = plt.subplots(figsize=(8, 5))
        scored = [r for r in self.rows if r.metric is not None and r.vs_eager is not None]
        # labels of neighbouring points alternate above and below, so that they overlap less
        for index, row in enumerate(sorted(scored, key=lambda r: (r.vs_eager, r.metric))):
            colour = {"chosen": "tab:green", "over budget": "tab:red"}.get(row.status, "tab:blue")
            axes.scatter(row.vs_eager, row.metric, color=colour, zorder=3)
            axes.annotate(row.name, (row.vs_eager, row.metric), fontsize=7,
                          xytext=(4, 4 if index % 2 == 0 else -10),
                          textcoords="offset points")  # fmt: skip
        axes.margins(x=0.2, y=0.1)  # room for the labels of the outermost points
        frontier = _pareto(scored)
        if len(frontier) > 1:
            axes.plot([r.vs_eager for r in frontier], [r.metric for r in frontier], "--",
                      color="grey", zorder=2, label="frontier")  # fmt: skip
        floor = self.baseline - self.max_drop
        lowest = min((r.metric for r in scored if r.metric is not None), default=floor)
        if floor >= lowest - 0.1:  # a floor far below every point would only flatten them
            axes.axhline(
                floor, color="tab:red", linewidth=0.8, label=f"{self.metric} ≥ {floor:.4f}"
            )
        axes.set_xlabel("speed × the module in eager PyTorch")
        axes.set_ylabel(self.metric)
        axes.set_title(f"accelerate within max_drop={self.max_drop:g}: chose {self.chosen}")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="best", fontsize=8)
        axes.grid(alpha=0.3)
        return save_figure(figure, path)


def _pareto(rows: Sequence[FrontierRow]) -> list[FrontierRow]:
    """The rows no other row beats on both speed and metric, by speed."""
    ordered = sorted(rows, key=lambda r: (-(r.vs_eager or 0.0), -(r.metric or 0.0)))
    best: list[FrontierRow] = []
    for row in ordered:
        if not best or (row.metric or 0.0) > (best[-1].metric or 0.0):
            best.append(row)
    return best


# -- data and metrics ---------------------------------------------------------------------------


@dataclass
class _Data:
    inputs: list[torch.Tensor]
    labels: list[torch.Tensor] | None
    digest: str


def read_data(data: Iterable[Any], example: tuple[torch.Tensor, ...]) -> _Data:
    """``data``'s batches — ``(inputs, labels)`` or inputs alone — checked against the
    example (one input; the same shape but the batch, and dtype), one line when not."""
    import hashlib

    if len(example) != 1:
        raise InputError("data= takes models of one input (the batches' inputs)")
    if isinstance(data, torch.Tensor):
        raise InputError("data must be an iterable of batches (a DataLoader, a list), not a tensor")
    try:
        iterator = iter(data)
    except TypeError:
        raise InputError(
            f"data must be an iterable of batches, got {type(data).__name__}"
        ) from None
    inputs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    with_labels: bool | None = None
    digest = hashlib.sha256()
    for index, batch in enumerate(iterator):
        if index >= MAX_BATCHES:
            break
        pair = isinstance(batch, (tuple, list)) and len(batch) == 2
        if with_labels is None:
            with_labels = pair
        elif with_labels != pair:
            raise InputError(f"data batch {index}: some batches have labels and some do not")
        images, targets = (batch[0], batch[1]) if pair else (batch, None)
        if not isinstance(images, torch.Tensor):
            raise InputError(
                f"data batch {index}: the inputs are {type(images).__name__}, not a tensor"
            )
        want = example[0]
        if images.dim() != want.dim() or images.shape[1:] != want.shape[1:]:
            raise InputError(
                f"data batch {index}: inputs of shape {list(images.shape)} do not match the "
                f"example's {list(want.shape)} (all but the batch size must be equal)"
            )
        if images.dtype != want.dtype:
            raise InputError(
                f"data batch {index}: inputs are {images.dtype}, the example {want.dtype}"
            )
        if targets is not None:
            targets = torch.as_tensor(targets)
            if targets.dtype.is_floating_point or targets.shape != images.shape[:1]:
                raise InputError(
                    f"data batch {index}: labels must be one whole number per input, got "
                    f"{targets.dtype} {list(targets.shape)}"
                )
            labels.append(targets.long())
        inputs.append(images)
        digest.update(f"{index}|{tuple(images.shape)}|{images.dtype}".encode())
        digest.update(images.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        if targets is not None:
            digest.update(targets.long().contiguous().numpy().tobytes())
    if not inputs:
        raise InputError("data holds no batches to score on")
    return _Data(inputs, labels if with_labels else None, digest.hexdigest()[:16])


def _split(data: _Data, held_out: bool) -> tuple[_Data, _Data]:
    """(batches to fine-tune and calibrate on, batches to score on): with ``held_out``, the
    last quarter of the batches (at least one) is kept for scoring only, so a fine-tuned
    candidate's drop is measured on data it did not train on; else both are all of it."""
    if not held_out:
        return data, data
    if len(data.inputs) < 2:
        raise InputError("fine_tune needs at least 2 data batches: 1 to tune on, 1 to score on")
    cut = len(data.inputs) - max(1, len(data.inputs) // 4)
    labels = data.labels or []
    return (
        _Data(data.inputs[:cut], labels[:cut], data.digest),
        _Data(data.inputs[cut:], labels[cut:], data.digest),
    )


def top1(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose largest output is the label."""
    return float((outputs.argmax(dim=1) == labels).float().mean())


def _logits(run: Callable[..., Any], batches: Sequence[torch.Tensor]) -> torch.Tensor:
    outputs = []
    with torch.inference_mode():
        for batch in batches:
            out = run(batch)
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise InputError(
                    "scoring needs the module to return logits (batch, classes); pass a metric "
                    "for other outputs"
                )
            outputs.append(out.float())
    return torch.cat(outputs)


def _scorer(
    module: nn.Module, data: _Data, metric: Metric | None
) -> tuple[str, Callable[[Callable[..., Any]], float]]:
    """The metric's name and a function scoring a model on the data."""
    if data.labels is not None:
        labels = torch.cat(data.labels)
        name = "top-1" if metric is None else getattr(metric, "__name__", "metric")
    else:
        if metric is not None:
            name = getattr(metric, "__name__", "metric")
        else:
            name = "agreement with the module's top-1"
        labels = _logits(module, data.inputs).argmax(dim=1)
    chosen = metric or top1
    classes = None

    def score(run: Callable[..., Any]) -> float:
        nonlocal classes
        logits = _logits(run, data.inputs)
        if classes is None:
            classes = logits.shape[1]
            if metric is None and (int(labels.min()) < 0 or int(labels.max()) >= classes):
                raise InputError(
                    f"labels must be in [0, {classes - 1}] for a model with {classes} outputs; "
                    f"found {int(labels.min())}…{int(labels.max())}"
                )
        value = float(chosen(logits, labels))
        if not math.isfinite(value):
            raise InputError(f"the metric returned {value}")
        return value

    return name, score


# -- candidates ---------------------------------------------------------------------------------


@dataclass
class _Candidate:
    name: str
    kind: str
    build: Callable[[], nn.Module]
    int8: bool = False  # quantize ``base`` (the module itself when None) with NNCF
    base: str | None = None
    transformer: bool = False  # NNCF's transformer recipe (a ViT)


INT8 = "int8"


def _with_int8(floats: list[_Candidate], transformer: bool = False) -> list[_Candidate]:
    """INT8 of the module first (no decomposition, no fine-tuning: the cheapest to try), then
    each float candidate followed by its INT8 (tried only when the float one keeps the
    budget: quantizing adds error, it never removes it)."""

    def unused() -> nn.Module:
        raise AssertionError("an INT8 candidate is built from its base")

    found = [_Candidate(INT8, INT8, unused, int8=True, transformer=transformer)]
    for candidate in floats:
        found.append(candidate)
        found.append(
            _Candidate(f"{candidate.name} + int8", f"{candidate.kind}+int8", unused, True,
                       candidate.name, transformer)
        )  # fmt: skip
    return found


def _candidates(
    module: nn.Module, example: tuple[torch.Tensor, ...], data: _Data
) -> list[_Candidate]:
    """Every approximate candidate that applies to ``module``, most promising first (each
    float one with its INT8, see :func:`_with_int8`)."""
    floats = _float_candidates(module, example, data)
    return _with_int8(floats, transformer=any(c.kind == "vit-sparse" for c in floats))


def _float_candidates(
    module: nn.Module, example: tuple[torch.Tensor, ...], data: _Data
) -> list[_Candidate]:
    """The Tucker-2 ladder for convolutional modules, the masks + pruning ladder for ViTs."""
    from headway.transforms.tucker import decompose_model

    found: list[_Candidate] = []
    vit = _adopted(module)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    if vit is None and any(max(m.kernel_size) > 1 for m in convs):  # a ViT: its patch embedding
        probe = data.inputs[0][:8]
        for rule in TUCKER_LADDER:

            def tucker(rule: str = rule) -> nn.Module:
                decomposed, _ = decompose_model(module, probe, rule)
                recalibrate_norms(decomposed, data)
                return decomposed.eval()

            found.append(_Candidate(f"tucker2 {rule}", "tucker2", tucker))
    if vit is not None:
        for sparsity, prune in VIT_LADDER:

            def sparse(
                sparsity: float = sparsity, prune: tuple[float, float] | None = prune
            ) -> nn.Module:
                return _sparse_vit(vit, data, sparsity, prune)

            label = f"vit masks {sparsity:g}" + (
                f" + prune {prune[0]:g}→{prune[1]:g}" if prune else ""
            )
            found.append(_Candidate(label, "vit-sparse", sparse))
    return found


def _adopted(module: nn.Module) -> nn.Module | None:
    from headway.models.deit import adopt_vit

    try:
        return adopt_vit(module).eval()
    except InputError:
        return None


def _sparse_vit(
    vit: nn.Module, data: _Data, sparsity: float, prune: tuple[float, float] | None
) -> nn.Module:
    from headway.transforms.sparse_attention import (
        additive_masks,
        average_attention,
        masks_for_sparsity,
    )
    from headway.transforms.token_pruning import SparsePrunedDeiT, keep_counts, pruning_ratios

    config = vit.config  # type: ignore[attr-defined]
    prefix = config.num_prefix_tokens
    maps = average_attention(vit, data.inputs[:8])
    masks, _ = masks_for_sparsity(maps, sparsity, prefix=prefix)
    counts = None
    if prune is not None:
        # the first quarter of the layers stays dense (3 of DeiT's 12, as the papers prune),
        # at least the first: no attention has scored the tokens before it
        first = max(1, config.depth // 4)
        ratios = pruning_ratios(config.depth, *prune, first_pruned=first)
        counts = keep_counts(config.num_patches, ratios, prefix=prefix)
    return SparsePrunedDeiT(copy.deepcopy(vit), additive_masks(masks), counts).eval()


NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def recalibrate_norms(model: nn.Module, data: _Data) -> bool:
    """Re-estimate every batch norm's running statistics on ``data``'s inputs (no labels, no
    gradients): an approximation changes the activations its norms were fitted to, and the
    stale statistics cost more accuracy than the approximation itself. True if it had any."""
    norms = [m for m in model.modules() if isinstance(m, NORMS) and m.track_running_stats]
    if not norms:
        return False
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    with torch.no_grad():
        for batch in data.inputs:
            model(batch)
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    return True


def fine_tune_steps(model: nn.Module, data: _Data, steps: int) -> None:
    """``steps`` steps of cross-entropy on ``data``'s labelled batches (SGD, momentum 0.9,
    a small learning rate with cosine decay), in place, in training mode (batch norms follow
    the new activations), as paper B retrains after decomposing."""
    if data.labels is None:
        raise InputError("fine_tune needs labelled data: batches of (inputs, labels)")
    params = [p for p in model.parameters() if p.dtype.is_floating_point]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    model.train()
    for step in range(steps):
        index = step % len(data.inputs)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(data.inputs[index]), data.labels[index])
        loss.backward()
        optimizer.step()
        schedule.step()
    for p in params:
        p.requires_grad_(False)
    model.eval()


# -- the search ---------------------------------------------------------------------------------


def check_max_drop(max_drop: object) -> None:
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)):
        raise InputError(f"max_drop must be a number ≥ 0, got {max_drop!r}")
    if not math.isfinite(max_drop) or max_drop < 0:
        raise InputError(f"max_drop must be a finite number ≥ 0, got {max_drop}")


def accelerate_within(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    single: bool,
    *,
    data: Iterable[Any],
    max_drop: float,
    metric: Metric | None,
    fine_tune: int | None,
    budget_s: float,
    exact: Callable[..., Any],
    approximations: Sequence[str] | None = None,
    cache_key: dict[str, Any] | None = None,
) -> Any:
    """The fastest of the module's best exact way and its approximate candidates whose metric
    on ``data`` drops by at most ``max_drop``; ``exact(module, example, budget)`` is the exact
    tuning (:func:`headway.accelerate` without data)."""
    check_max_drop(max_drop)
    if fine_tune is not None and (
        isinstance(fine_tune, bool) or not isinstance(fine_tune, int) or fine_tune < 0
    ):
        raise InputError(f"fine_tune must be a whole number of steps ≥ 0, got {fine_tune!r}")
    began = time.perf_counter()
    batches = read_data(data, example)
    if fine_tune and batches.labels is None:
        raise InputError("fine_tune needs labelled data: batches of (inputs, labels)")
    tuning, scored = _split(batches, bool(fine_tune))
    module = copy.deepcopy(module).eval()
    name, score = _scorer(module, scored, metric)
    baseline = score(module)
    arg = example[0] if single else example
    key = None
    if cache_key is not None and metric is None:  # a callable's identity cannot be keyed
        from headway.tuning import plan_key, weights_digest

        key = plan_key({
            **cache_key, "module": weights_digest(module), "data": batches.digest,
            "max_drop": max_drop, "fine_tune": fine_tune, "approximations": approximations,
            "inputs": [[list(a.shape), str(a.dtype)] for a in example], "kind": "frontier",
        })  # fmt: skip
        reused = _reuse(key, module, example, arg, tuning, score, baseline, max_drop,
                        fine_tune, exact, budget_s * EXACT_SHARE)  # fmt: skip
        if reused is not None:
            return reused
    best_exact = exact(module, arg, budget_s * EXACT_SHARE)
    rows = [FrontierRow("exact", "exact", "within budget", metric=baseline, drop=0.0,
                        way=best_exact.report.chosen)]  # fmt: skip
    admissible: dict[str, Any] = {"exact": best_exact}
    candidates = [] if max_drop == 0 else _candidates(module, example, tuning)
    if approximations is not None:
        known = {c.name for c in candidates} | {c.kind for c in candidates}
        unknown = sorted(set(approximations) - known)
        if unknown:
            raise InputError(
                f"no approximation {', '.join(map(repr, unknown))} for this module: choose from "
                f"{', '.join(sorted(known)) or 'none'}"
            )
        chosen = {c.name for c in candidates if {c.name, c.kind} & set(approximations)}
        chosen |= {c.base for c in candidates if c.name in chosen and c.base}  # their bases
        candidates = [c for c in candidates if c.name in chosen]
        if any(c.int8 for c in candidates):
            require_int8()  # asked for by name: one line saying how to install it
    # what the last candidate of each sort (float, INT8) took: the next of the sort is not
    # started if it would overrun
    costs = {False: 0.0, True: 0.0}
    bases: dict[str, nn.Module] = {}  # float candidates that keep the budget, for their INT8
    inapplicable: set[str] = set()  # float candidates that do not apply to this module
    for candidate in candidates:
        cost = costs[candidate.int8]
        left = budget_s - (time.perf_counter() - began)
        if left <= 0 or cost > left:
            why = (
                "the budget was spent"
                if left <= 0
                else f"would overrun the budget (about {cost:.0f} s)"
            )
            rows.append(FrontierRow(candidate.name, candidate.kind, "not tried", why))
            continue
        if candidate.int8:
            why_not = int8_missing()
            if candidate.base in inapplicable:
                rows.append(FrontierRow(candidate.name, candidate.kind, "not applicable",
                                        f"its base ({candidate.base}) does not apply"))  # fmt: skip
                continue
            if why_not is None and candidate.base is not None and candidate.base not in bases:
                why_not = f"its base ({candidate.base}) does not keep the budget"
            if why_not is not None:
                rows.append(FrontierRow(candidate.name, candidate.kind, "not tried", why_not))
                continue
        started, refused = time.perf_counter(), False
        row = FrontierRow(candidate.name, candidate.kind, "failed")
        rows.append(row)
        try:
            if candidate.int8:
                base = module if candidate.base is None else bases[candidate.base]
                approximate = quantize(
                    base, example, tuning.inputs, transformer=candidate.transformer
                )
                row.metric = score(approximate)
            else:
                approximate = candidate.build()
                row.metric = score(approximate)
                if fine_tune:
                    row.fine_tuned_from = row.metric
                    fine_tune_steps(approximate, tuning, fine_tune)
                    row.metric = score(approximate)
        except NotApplicable as error:  # refused before any work: its time is no estimate
            row.status, row.reason = "not applicable", first_line(error)
            inapplicable.add(candidate.name)
            refused = True
            continue
        except InputError as error:
            row.reason = first_line(error)
            continue
        except Exception as error:  # a transform that does not fit this module
            row.reason = f"{type(error).__name__}: {first_line(error)}"
            continue
        finally:
            if not refused:
                costs[candidate.int8] = time.perf_counter() - started
        row.drop = baseline - row.metric
        if row.drop > max_drop + 1e-12:
            row.status, row.reason = "over budget", f"drop {row.drop:.4f} > {max_drop:g}"
            continue
        if candidate.int8:  # runs on OpenVINO as it is: no exact way to choose
            fast = _int8_result(approximate, budget_s, time.perf_counter() - started)
        else:
            bases[candidate.name] = approximate
            # on the way that won for the module itself (the reference is always built too)
            fast = exact(approximate, arg, WAY_BUDGET_S, [best_exact.report.chosen])
        row.status, row.way = "within budget", fast.report.chosen
        admissible[candidate.name] = fast
        costs[candidate.int8] = time.perf_counter() - started
    medians = _time_admissible(module, arg, single, admissible, rows, budget_s)
    chosen = min(
        (r for r in rows if r.status == "within budget" and r.median_ms is not None),
        key=lambda r: r.median_ms,  # type: ignore[arg-type, return-value]
        default=rows[0],
    )
    chosen.status = "chosen"
    for row in rows:
        if row.status == "within budget":
            row.reason = "slower than the chosen one"
    exact_row = rows[0]
    report = FrontierReport(
        metric=name,
        baseline=baseline,
        max_drop=float(max_drop),
        chosen=chosen.name,
        eager_ms=medians["eager"],
        exact_ms=exact_row.median_ms,
        tune_s=time.perf_counter() - began,
        fine_tune=fine_tune,
        rows=rows,
    )
    result = admissible[chosen.name]
    result.report.frontier = report
    if key is not None:
        _save_frontier(key, report)
    return result


def _int8_result(model: nn.Module, budget_s: float, tune_s: float) -> nn.Module:
    """An INT8 candidate as :func:`headway.accelerate` returns a choice: with a ``report``
    (its way, and the frontier once chosen)."""
    model.report = TuningPlan(  # type: ignore[assignment]
        chosen=INT8_WAY, precision="int8", tolerance=math.nan, budget_s=budget_s,
        tune_s=tune_s, key="", reference=INT8_WAY, diff_label="(scored on the data)",
    )  # fmt: skip
    return model


def _frontier_path(key: str) -> Path:
    from headway.io import cache_root

    return cache_root() / "frontiers" / f"{key}.json"


def _save_frontier(key: str, report: FrontierReport) -> None:
    """The decision, cached (a cache that cannot be written costs the next call a search)."""
    import hashlib
    import json
    import logging

    from headway.io import atomic_write_text

    record = report.to_json()
    text = json.dumps(record, sort_keys=True)
    try:
        atomic_write_text(
            _frontier_path(key),
            json.dumps({"frontier": record, "sha256": hashlib.sha256(text.encode()).hexdigest()}),
        )
    except (OSError, InputError) as error:
        logging.getLogger(__name__).warning("accelerate's decision not cached (%s)", error)


def _reuse(
    key: str,
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    arg: Any,
    tuning: _Data,
    score: Callable[[Callable[..., Any]], float],
    baseline: float,
    max_drop: float,
    fine_tune: int | None,
    exact: Callable[..., Any],
    exact_budget_s: float,
) -> Any:
    """The cached decision for ``key`` rebuilt (the chosen candidate only, fine-tuned again,
    scored again and run on its way), or None when there is none, it cannot be trusted, or the
    rebuilt candidate no longer keeps the budget (then the caller searches again)."""
    import hashlib
    import json
    import logging

    path = _frontier_path(key)
    if not path.exists():
        return None
    log = logging.getLogger(__name__)
    try:
        stored = json.loads(path.read_text())
        text = json.dumps(stored["frontier"], sort_keys=True)
        if hashlib.sha256(text.encode()).hexdigest() != stored["sha256"]:
            raise ValueError("its content does not match its hash")
        report = FrontierReport.from_json(stored["frontier"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("accelerate's cached decision %s cannot be trusted (%s)", path, error)
        return None
    chosen = next(r for r in report.rows if r.name == report.chosen)
    if chosen.kind == "exact":
        result = exact(module, arg, exact_budget_s)  # its own plan is cached too
    else:
        candidates = {c.name: c for c in _candidates(module, example, tuning)}
        found = candidates.get(chosen.name)
        if found is None or (found.int8 and int8_missing() is not None):
            return None
        float_one = found if not found.int8 else candidates.get(found.base or "")
        if float_one is None:  # the module itself, quantized
            approximate = module
        else:
            approximate = float_one.build()
            if fine_tune:
                fine_tune_steps(approximate, tuning, fine_tune)
        if found.int8:
            approximate = quantize(
                approximate, example, tuning.inputs, transformer=found.transformer
            )
        metric = score(approximate)
        if baseline - metric > max_drop + 1e-12:
            log.warning("the cached choice %s now drops %.4f: searching again", chosen.name,
                        baseline - metric)  # fmt: skip
            return None
        chosen.metric, chosen.drop = metric, baseline - metric
        if found.int8:
            result = _int8_result(approximate, exact_budget_s, 0.0)
        else:
            result = exact(approximate, arg, WAY_BUDGET_S, [chosen.way] if chosen.way else None)
    report.cached = True
    result.report.frontier = report
    return result


def _time_admissible(
    module: nn.Module,
    arg: Any,
    single: bool,
    admissible: dict[str, Any],
    rows: list[FrontierRow],
    budget_s: float,
) -> dict[str, float]:
    """The module in eager PyTorch, its best exact way and every admissible candidate's way,
    timed interleaved in one process; speeds filled into ``rows``."""
    args = (arg,) if single else tuple(arg)
    runs = {"eager": lambda: call_ms(module, args, calls=3)}
    for name, fast in admissible.items():
        runs[name] = lambda fast=fast: call_ms(fast, args, calls=3)
    medians = time_interleaved(runs, budget_s=max(1.0, budget_s * 0.1), min_rounds=3)
    eager = medians["eager"]
    exact = medians["exact"]
    for row in rows:
        if row.name in medians:
            row.median_ms = medians[row.name]
            row.vs_eager = eager / row.median_ms
            row.vs_exact = exact / row.median_ms
    return medians
