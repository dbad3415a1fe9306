"""``headway export``: what headway runs, written as deployable files for other runtimes —
ONNX (ONNX Runtime or TensorRT elsewhere, e.g. on an embedded board), OpenVINO IR, TorchScript
and AOTInductor ``.pt2`` — each reloaded here and compared with eager on fresh probe inputs,
the result written beside the files as ``verification.json``.

An export is complete or absent: files go to a temporary folder next to the target, which is
renamed into place only when every format is written and verified.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from headway.errors import InputError, first_line
from headway.io import atomic_write_text, can_create_in, staging_folder
from headway.runtime.engines import INSTALL_HINT, engine_available, open_engine

FORMATS = {
    "onnx": ".onnx",
    "openvino": ".xml",
    "torchscript": ".pt",
    "aoti": ".pt2",
}
DEFAULT_FORMATS = ("onnx", "openvino", "torchscript")


@dataclass
class ExportPart:
    """One graph to export: its file stem, the module and example inputs (probes are drawn
    like them with fresh seeds)."""

    name: str
    module: nn.Module
    example: tuple[torch.Tensor, ...]


def check_formats(formats: Sequence[str]) -> list[str]:
    """The formats, or one line naming the known ones (and how to install a missing engine)."""
    chosen = list(dict.fromkeys(formats))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise InputError(
            f"unknown export format {', '.join(unknown) or '(none)'}: choose from "
            f"{', '.join(FORMATS)}"
        )
    needs = {"onnx": "onnxruntime", "openvino": "openvino"}
    for fmt in chosen:
        if fmt in needs and not engine_available(needs[fmt]):
            raise InputError(f"export format {fmt!r} needs {needs[fmt]}: {INSTALL_HINT}")
    return chosen


def check_target(folder: Path) -> None:
    """The export folder must not exist yet (nothing is overwritten or mixed), and its parent
    must be a writable folder."""
    if folder.is_symlink():
        raise InputError(
            f"{folder} is a symbolic link (to {os.readlink(folder)}): exports go to a new folder"
        )
    if folder.exists():
        what = "a folder" if folder.is_dir() else "a file"
        raise InputError(f"{folder} is already {what}: exports go to a new folder")
    parent = folder.parent if str(folder.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise InputError(f"{folder}: {existing} is not a writable folder")
    reason = can_create_in(existing)  # tried for real: os.access says yes to root anywhere
    if reason is not None:
        raise InputError(f"{folder}: {existing} is not a writable folder ({reason})")


def check_runs(module: nn.Module, example: tuple[torch.Tensor, ...], what: str) -> None:
    """One line starting with ``what`` when ``module`` cannot run on ``example`` (an input too
    small for its strides, too large for memory), before any file is written."""
    try:
        with torch.no_grad():
            module.eval()(*example)
    except (RuntimeError, ValueError, MemoryError) as error:
        raise InputError(f"{what} ({first_line(error)})") from None


def probe_inputs(example: tuple[torch.Tensor, ...], seed: int) -> tuple[torch.Tensor, ...]:
    """Inputs like ``example``: floats drawn fresh with its mean and spread (so a stage sees
    values of the size it is made for), other dtypes kept."""
    generator = torch.Generator().manual_seed(seed)
    probes = []
    for tensor in example:
        if tensor.is_floating_point():
            values = tensor.float()
            scale = float(values.std()) if values.numel() > 1 else 1.0
            drawn = torch.randn(tensor.shape, generator=generator) * (scale or 1.0)
            probes.append((drawn + values.mean()).to(tensor.dtype).contiguous())
        else:
            probes.append(tensor.clone())
    return tuple(probes)


def output_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of an output, in order: a tensor, or any nesting of tuples, lists and
    dicts of them (a detection model's dict of boxes and scores)."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [v for v in pytree.tree_leaves(value) if isinstance(v, torch.Tensor)]


def reference_outputs(
    run: Callable[..., Any], inputs: Sequence[tuple[torch.Tensor, ...]]
) -> list[list[torch.Tensor]]:
    """``run``'s outputs on each of ``inputs``, as fp32 tensors (the reference a fast path is
    held to; the caller picks the grad mode). Each call gets copies of the inputs, so a model
    that writes into its input changes neither the caller's tensors nor the next check."""
    return [[o.float() for o in output_tensors(run(*_copies(args)))] for args in inputs]


def _copies(args: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def max_difference(
    run: Callable[..., Any],
    inputs: Sequence[tuple[torch.Tensor, ...]],
    references: Sequence[Sequence[torch.Tensor]],
) -> float:
    """The largest |Δ| of ``run``'s outputs to ``references`` over ``inputs``: the one check
    of a fast path's answers on probes (``accelerate``, ``export``; the caller picks the grad
    mode)."""
    diff = 0.0
    for args, expected in zip(inputs, references, strict=True):
        got = output_tensors(run(*_copies(args)))
        for g, e in zip(got, expected, strict=True):
            diff = max(diff, float((g.float() - e).abs().max()))
    return diff


def output_scale(references: Sequence[Sequence[torch.Tensor]]) -> float:
    """The largest |value| of the reference outputs (at least 1e-12): what a relative
    difference is relative to."""
    largest = max(
        (float(t.float().abs().max()) for outputs in references for t in outputs if t.numel()),
        default=0.0,
    )
    return max(largest, 1e-12)


def portable_name(name: str) -> str:
    """``name`` as a file name every file system takes (``torchvision:resnet18`` →
    ``torchvision-resnet18``): letters, digits, ``.``, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "model"


SPACE_MARGIN = 64 << 20  # bytes beyond the weights a written file may need (graph, code)


def check_space(folder: Path, module: nn.Module, what: str) -> None:
    """One line when ``folder``'s file system has less room than ``module``'s weights need,
    twice over (a file and its temporary) plus a margin, before a serializer starts: torch's
    archive writer and AOTInductor end the process (a C++ exception in a destructor) when the
    disk fills under them, instead of raising."""
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    needed = 2 * weights + SPACE_MARGIN
    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return
    if free < needed:
        shown = folder.parent if ".staging-" in folder.name else folder  # the user's folder
        raise InputError(
            f"{what}: no space left on the device of {shown} ({free / 2**20:.0f} MiB free, "
            f"writing it needs about {needed / 2**20:.0f} MiB); free some space or choose "
            "another folder"
        )


def _write(fmt: str, part: ExportPart, path: Path) -> Callable[..., Any]:
    """Write ``part`` as ``fmt`` to ``path`` and return a callable that runs the written file."""
    module, example = part.module.eval(), tuple(a.contiguous() for a in part.example)
    check_space(path.parent, module, f"{part.name} as {fmt}")
    write_graph = getattr(module, "write_graph", None)
    if write_graph is not None:  # a graph built already (an INT8 model): written as it is
        return write_graph(fmt, path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notices
        if fmt in ("onnx", "openvino"):
            onnx_path = path.with_suffix(".onnx")
            if not onnx_path.exists():
                torch.onnx.export(
                    module,
                    example,
                    str(onnx_path),
                    dynamo=False,
                    opset_version=18,
                    do_constant_folding=True,
                )
            if fmt == "onnx":
                session = open_engine("onnxruntime", onnx_path)
                names = [i.name for i in session.get_inputs()]
                return lambda *args: [
                    torch.from_numpy(o)
                    for o in session.run(
                        None, dict(zip(names, [a.numpy() for a in args], strict=True))
                    )
                ]
            import openvino as ov

            core = ov.Core()
            # fp32 weights: save_model would store them as fp16 by default
            ov.save_model(core.read_model(str(onnx_path)), str(path), compress_to_fp16=False)
            compiled = open_engine("openvino", path)
            return lambda *args: [
                torch.from_numpy(compiled([a.numpy() for a in args])[o].copy())
                for o in compiled.outputs
            ]
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))
            loaded = torch.jit.load(str(path))
            return lambda *args: output_tensors(loaded(*args))
        program = torch.export.export(module, example, strict=False)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        runner = torch._inductor.aoti_load_package(str(path))
        return lambda *args: output_tensors(runner(*args))


def export_parts(
    parts: list[ExportPart],
    folder: str | Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
    probes: int = 3,
    command: str = "",
    description: dict[str, Any] | None = None,
    on_part: Callable[[str], None] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Export every part in every format into the new folder ``folder``, reload each file and
    compare it with the module on ``probes`` fresh inputs; returns (and writes) the record of
    ``verification.json``. ``extra(staging)`` writes more files into the folder before it
    takes its place (a report, a plot). Nothing is left at ``folder`` if anything fails."""
    folder = Path(folder)
    formats = check_formats(formats)
    check_target(folder)
    if probes < 1:
        raise InputError(f"probes must be ≥ 1, got {probes}")
    staging = staging_folder(folder)
    record: dict[str, Any] = {
        "command": command,
        **(description or {}),
        "versions": _versions(),
        "probes": probes,
        "files": {},
    }
    try:
        for part in parts:
            inputs = [probe_inputs(part.example, seed) for seed in range(probes)]
            with torch.no_grad():
                references = reference_outputs(part.module, inputs)
            for fmt in formats:
                if on_part is not None:
                    on_part(f"{part.name} → {fmt}")
                path = staging / f"{portable_name(part.name)}{FORMATS[fmt]}"
                try:
                    run = _write(fmt, part, path)
                    with torch.no_grad():
                        diff = max_difference(run, inputs, references)
                except InputError:
                    raise
                except Exception as error:  # exporters and engines raise many kinds
                    raise InputError(
                        f"{part.name} could not be exported as {fmt} ({first_line(error)})"
                    ) from None
                record["files"][path.name] = {
                    "part": part.name,
                    "format": fmt,
                    "inputs": [list(a.shape) for a in part.example],
                    "max_abs_diff": diff,
                    "max_rel_diff": diff / output_scale(references),
                }
        if "onnx" not in formats:  # the intermediate of the OpenVINO IR
            for leftover in staging.glob("*.onnx"):
                leftover.unlink()
        atomic_write_text(staging / "verification.json", json.dumps(record, indent=2))
        if extra is not None:
            extra(staging)
        try:
            os.replace(staging, folder)
        except OSError as error:
            if os.path.lexists(folder):  # made meanwhile, e.g. by a second export to it
                raise InputError(
                    f"{folder} appeared while this export ran (another export to the same "
                    "folder?): exports go to a new folder; nothing was written"
                ) from None
            raise InputError(f"{folder}: cannot be made ({error.strerror})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record


def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    for package in ("headway", "onnx", "onnxruntime", "openvino"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions
