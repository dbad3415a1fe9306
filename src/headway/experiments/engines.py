"""headway's models beside the inference engines users already have (ONNX Runtime, OpenVINO) on
the same inputs, timed in alternating blocks in one process: DeiT-Tiny dense and with paper C's
static masks and token pruning (``deit_tiny_pruned``: its "eager" is headway's torch path), and
VGG-16 at 32×32, dense and Tucker-2-decomposed. Each row gives the median ms per call, the
ratio to eager PyTorch and the largest difference from eager's output. Beside headway's own
paths: bf16 autocast in torch (where the CPU has bf16 instructions), and the module as
OpenVINO's users run it (``ov.convert_model``, LATENCY hint, fp32 and bf16). The CSWinTT
encoder (default configuration) is there too: headway's ``fused`` and ``spectral`` encoders
beside the engines running the exported eager graph and the exported spectral graph."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from headway.measure import keeps_global_rng
from headway.models.cswintt import build_cswintt, get_config
from headway.models.registry import create_model
from headway.runtime.engines import ENGINES, compile_module, engine_available
from headway.transforms.heads import fuse_window_attention
from headway.transforms.packing import pack_linear_weights
from headway.transforms.sparse_attention import (
    additive_masks,
    average_attention,
    masks_for_sparsity,
)
from headway.transforms.spectral import spectral_window_attention
from headway.transforms.token_pruning import SparsePrunedDeiT, keep_counts, pruning_ratios
from headway.transforms.tucker import decompose_model
from headway.tuning import interleaved_medians
from headway.ways import cpu_has_bf16

CASES = ("deit_tiny", "deit_tiny_pruned", "vgg16", "vgg16_tucker", "cswintt_encoder")


class _Encoder(nn.Module):
    """CSWinTT's encoder stage as a module of (tokens, padding mask), for export and timing."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.network.forward_encoder(tokens, padding_mask)


@dataclass
class EngineCase:
    """One comparison: the plain model and its inputs, headway's own faster versions of it
    (label → module, run by PyTorch) and the graphs given to the engines (label → module)."""

    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    headway: dict[str, nn.Module] = field(default_factory=dict)
    graphs: dict[str, nn.Module] = field(default_factory=dict)
    compilable: nn.Module | None = None  # what ``compiled`` gives torch.compile
    # one image input: also bf16 autocast in torch, and the module as OpenVINO's users run it
    single_image: bool = True


def _case(name: str, batch: int) -> EngineCase:
    """The case ``name`` with random weights of a fixed seed (the encoder: default CSWinTT,
    ``batch`` frames, the last 37 tokens of the first frame padded)."""
    torch.manual_seed(0)
    if name == "cswintt_encoder":
        network = build_cswintt(get_config("default")).eval()
        tokens = torch.randn(network.config.num_tokens, batch, network.config.d_model)
        padding = torch.zeros(batch, network.config.num_tokens, dtype=torch.bool)
        padding[0, -37:] = True
        eager = _Encoder(network)
        fused = _Encoder(fuse_window_attention(network)[0])
        spectral = _Encoder(spectral_window_attention(network)[0])
        packed = pack_linear_weights(spectral)[0]
        return EngineCase(
            eager,
            (tokens, padding),
            headway={"fused": fused, "spectral": spectral, "spectral + oneDNN linears": packed},
            graphs={"eager graph": eager, "spectral graph": spectral},
            compilable=spectral,
            single_image=False,
        )
    if name == "deit_tiny_pruned":  # paper C: ~70% sparse static masks, pruning 0.1 → 0.9
        model = create_model("deit_tiny").eval()
        size = model.config.img_size
        maps = average_attention(model, [torch.randn(8, 3, size, size)])
        masks, _ = masks_for_sparsity(maps, 0.7)
        schedule = pruning_ratios(model.config.depth, 0.1, 0.9)
        pruned = SparsePrunedDeiT(
            model, additive_masks(masks), keep_counts(model.config.num_patches, schedule)
        )
        return EngineCase(
            pruned, (torch.randn(batch, 3, size, size),), graphs={"": pruned}, compilable=pruned
        )
    if name == "deit_tiny":
        model = create_model("deit_tiny").eval()
        size = model.config.img_size
        packed = pack_linear_weights(model)[0]
        return EngineCase(
            model,
            (torch.randn(batch, 3, size, size),),
            headway={"oneDNN linears": packed},
            graphs={"": model},
            compilable=model,
        )
    model = create_model("vgg16", num_classes=10, small_input=True).eval()
    x = torch.randn(batch, 3, 32, 32)
    if name == "vgg16_tucker":
        model, _ = decompose_model(model, x[:2], "macs:0.19")
        model.eval()
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return EngineCase(
        model,
        (x,),
        headway={"eager channels-last": _ChannelsLast(last)},
        graphs={"": model},
        compilable=_ChannelsLast(last),
    )


class _ChannelsLast(nn.Module):
    """Runs a channels-last copy of a CNN on a channels-last copy of its input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


@keeps_global_rng
def compare_engines(
    cases: tuple[str, ...] = CASES,
    batches: tuple[int, ...] = (1, 32),
    engines: tuple[str, ...] | None = None,
    min_run_time: float = 1.0,
    on_case: Callable[[str], None] | None = None,
    compiled: bool = False,
) -> list[dict[str, Any]]:
    """One row per (case, batch, variant). Variants: ``eager``, headway's own fast paths of
    the case (CNNs: channels-last; DeiT: oneDNN-packed linears; the CSWinTT encoder: ``fused``,
    ``spectral`` and spectral with packed linears), with ``compiled`` also the case's best
    PyTorch module compiled by inductor with freezing (compilation not timed; seconds to a
    minute per case), and every installed engine on each of the case's exported graphs."""
    engines = tuple(e for e in (engines or ENGINES) if engine_available(e))
    bf16_torch = cpu_has_bf16()  # where bf16 would be emulated, it only measures the emulation
    rows = []
    for name in cases:
        # a tracker encodes one frame at a time: the encoder case runs at batch 1 only
        for batch in (1,) if name == "cswintt_encoder" else batches:
            if on_case is not None:
                on_case(f"{name}, batch {batch}")
            case = _case(name, batch)
            with torch.inference_mode():
                expected = case.model(*case.inputs)
            variants: dict[str, Callable[[], torch.Tensor]] = {
                "eager": partial(case.model, *case.inputs)
            }
            for label, module in case.headway.items():
                variants[label] = partial(module, *case.inputs)
            if compiled and case.compilable is not None:
                program = torch.compile(case.compilable, dynamic=False, options={"freezing": True})
                variants["compiled (inductor, freezing)"] = partial(program, *case.inputs)
            if case.single_image and bf16_torch:
                variants["eager bf16 (autocast)"] = partial(
                    _autocast_bf16, case.model, *case.inputs
                )
            for engine in engines:
                for graph, module in case.graphs.items():
                    label = f"{engine} ({graph})" if graph else engine
                    variants[label] = partial(
                        compile_module(engine, module, case.inputs, standalone=True), *case.inputs
                    )
            if case.single_image and any(e.startswith("openvino") for e in engines):
                from headway.runtime.peers import call_compiled, openvino_compiled

                for precision in ("f32", "bf16"):
                    compiled_model = openvino_compiled(
                        case.model, case.inputs[0], precision, "LATENCY"
                    )
                    label = f"openvino as its users run it ({precision}, LATENCY)"
                    variants[label] = partial(call_compiled, compiled_model, case.inputs[0])
            with torch.inference_mode():
                differences = {
                    label: float((run().float() - expected).abs().max())
                    for label, run in variants.items()
                }
                seconds = interleaved_medians(variants, min_run_time=min_run_time)
            for label, value in seconds.items():
                rows.append(
                    {
                        "case": name,
                        "batch": batch,
                        "variant": label,
                        "ms": 1e3 * value,
                        "speedup": seconds["eager"] / value,
                        "max_diff": differences[label],
                    }
                )
    return rows


def _autocast_bf16(model: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """The module under CPU bf16 autocast (oneDNN bf16 kernels), answer back in fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(*inputs).float()


def engines_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of :func:`compare_engines`' rows (``headway bench engines``)."""
    header = ["case", "batch", "variant", "ms", "× eager", "max |Δ| vs eager"]
    cells = [
        [
            r["case"],
            str(r["batch"]),
            r["variant"],
            f"{r['ms']:.2f}",
            f"{r['speedup']:.2f}×",
            f"{r['max_diff']:.1e}",
        ]
        for r in rows
    ]
    return header, cells
