"""Exporting CSWinTT for ``headway-runner``: every stage traced to TorchScript for the tracker's
input shapes and saved to a folder with a ``manifest.txt`` the runner reads.

Three recipes (the ``cpp*`` executors):

| executor | what the runner loads |
|---|---|
| ``cpp`` | Case B: the plain network's stages (the graphs ``scripted`` runs) |
| ``cpp-heads`` | Case C: per encoder layer the QKV projection, each head as its own module (its |
|  | relative bias baked in) and the rest of the layer; the runner runs the heads on |
|  | its thread pool, one CUDA stream per thread on a GPU |
| ``cpp-spectral`` | the ``spectral`` network's stages (spectral window attention, folded batch |
|  | norms; PyTorch's own linears, since packed oneDNN weights do not serialise) |
| ``cpp-aoti`` | the same network, every stage exported with ``torch.export`` and compiled ahead |
|  | of time by AOTInductor (freezing: packed weights, fused kernels), loaded from |
|  | C++ as ``.pt2`` packages; compiled once per weights and shapes, then cached |
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from headway.errors import InputError, first_line
from headway.io import (
    atomic_write_text,
    discard_cached,
    locked_folder,
    manifest_matches,
    write_manifest,
)
from headway.models.cswintt import CSWinTT, CyclicWindowEncoderLayer, EncoderContext
from headway.runtime.engines import module_fingerprint
from headway.tracking.executors import (
    ExecutorSpec,
    StageModule,
    executor_names,
    resolve_executor,
    rewrite_network,
)
from headway.transforms.heads import WindowHead

NATIVE_EXECUTORS = tuple(executor_names("cpp"))
AOTI_FORMAT = 1  # bump when the AOTInductor recipe changes, so cached packages are not reused
MODEL_FORMAT = 1  # the runner refuses another
log = logging.getLogger(__name__)


class _Project(nn.Module):
    def __init__(self, layer: CyclicWindowEncoderLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.layer.project(tokens)


class _Finish(nn.Module):
    def __init__(self, layer: CyclicWindowEncoderLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, tokens: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        return self.layer.finish(tokens, attended)


class _Head(nn.Module):
    """One head with its relative-position bias as a constant: (q, k, v, padding mask) → (L, B,
    d/h). The bias depends on the weights only, so the runner need not build it."""

    def __init__(
        self, head: WindowHead, layer: CyclicWindowEncoderLayer, context: EncoderContext
    ) -> None:
        super().__init__()
        self.head = head
        self.dropout = layer.attention_dropout
        self.geometry = context.geometry
        bias = context.biases.get(head.window)
        self.has_bias = bias is not None
        self.register_buffer("bias", bias if bias is not None else torch.empty(0))

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor
    ) -> torch.Tensor:
        biases = {self.head.window: self.bias} if self.has_bias else {}
        return self.head(q, k, v, EncoderContext(padding_mask, biases, self.geometry), self.dropout)


def _save(
    module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, aoti: bool = False
) -> None:
    """``path`` (``.pt``): the module traced to TorchScript; with ``aoti``, ``path`` with the
    suffix ``.pt2`` instead: an AOTInductor package (from the cache when one exists). A file
    system without room for it is one line before the serializer starts (full, it would end
    the process)."""
    from headway.runtime.deploy import check_space
    from headway.tracking.native.build import native_cache_dir

    if aoti:
        check_space(native_cache_dir(), module, f"the stage {path.stem} for the C++ runner")
        cached = _aoti_package(module.eval(), example)
        target = path.with_suffix(".pt2")
        target.unlink(missing_ok=True)
        try:
            target.symlink_to(cached)
        except OSError:  # a file system without links
            shutil.copyfile(cached, target)
        return
    check_space(path.parent, module, f"the stage {path.stem} for the C++ runner")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notices on shape arithmetic, TorchScript's note
        traced = torch.jit.trace(module.eval(), example, check_trace=False)
        torch.jit.save(traced, str(path))


def _aoti_package(module: nn.Module, example: tuple[torch.Tensor, ...]) -> Path:
    """AOTInductor package of ``module`` for inputs like ``example``, compiled once (tens of
    seconds per stage on two cores) and kept in ``$HEADWAY_CACHE/native/aoti`` under a hash of
    the module's structure, weights, input shapes, torch version and this recipe."""
    from headway.tracking.native.build import native_cache_dir

    folder = native_cache_dir() / "aoti"
    key = aoti_key(module, example)
    path = folder / f"{getattr(module, 'method', type(module).__name__)}-{AOTI_FORMAT}-{key}.pt2"
    if manifest_matches(path):  # verified, never trusted: anything else is compiled again
        return path
    with locked_folder(folder, wait=True):
        if manifest_matches(path):
            return path
        discard_cached(path)
        log.warning("cpp-aoti: compiling %s with AOTInductor (once; cached)", path.name)
        temporary = path.with_suffix(".building.pt2")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.export(module, example, strict=False)
                torch._inductor.aoti_compile_and_package(
                    program, package_path=str(temporary), inductor_configs={"freezing": True}
                )
        except Exception as error:  # export and inductor raise many kinds
            temporary.unlink(missing_ok=True)
            first = first_line(error)
            raise AOTICompileError(
                f"AOTInductor could not compile {path.name} ({first}); executor 'cpp-spectral' "
                "runs the same graph without it"
            ) from error
        os.replace(temporary, path)
        write_manifest(path)  # last: a package without a matching manifest is never loaded
    return path


def aoti_key(module: nn.Module, example: tuple[torch.Tensor, ...]) -> str:
    """The cache key of an AOTInductor package: the module and input shapes (as for engine
    exports), plus what the compiled code is specific to: the inputs' device (and GPU model)
    and the CPU instruction set the kernels were generated for."""
    devices = sorted({str(t.device) for t in example})
    gpus = [torch.cuda.get_device_name(d) for d in devices if d.startswith("cuda")]
    digest = hashlib.sha256(module_fingerprint(module, example).encode())
    digest.update(f"{devices}|{gpus}|{torch.backends.cpu.get_cpu_capability()}".encode())
    return digest.hexdigest()[:24]


class AOTICompileError(InputError):
    """torch.export or AOTInductor failed on a stage: a limit of the network's code rather than
    a bug, reported in one line that says which executor runs it instead."""


def native_spec(executor: str) -> ExecutorSpec:
    """The table's spec of a C++ runner executor, or one line naming them."""
    if executor not in NATIVE_EXECUTORS:
        raise InputError(f"unknown native executor {executor!r}: {', '.join(NATIVE_EXECUTORS)}")
    return resolve_executor(executor)[1]


@torch.no_grad()
def export_native_model(
    network: CSWinTT, folder: str | Path, executor: str = "cpp", seed: int = 0
) -> Path:
    """Trace ``network`` (on its own device) for the runner into ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = native_spec(executor)
    network = rewrite_network(spec, network).eval()
    config = network.config
    device = next(network.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)

    aoti = spec.backend == "aoti"
    memory_format = spec.memory_format  # as rewrite_network laid them out

    def images(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.randn(1, 3, size, size, device=device, generator=generator)
        image = image.contiguous(memory_format=memory_format)
        mask = torch.zeros(1, size, size, dtype=torch.bool, device=device)
        mask[:, : size // 8] = True
        return image, mask

    template, search = images(config.template_size), images(config.search_size)
    _save(StageModule(network, "forward_backbone"), template, folder / "backbone_template.pt", aoti)
    _save(StageModule(network, "forward_backbone"), search, folder / "backbone_search.pt", aoti)
    features = [network.forward_backbone(*template)] * config.num_templates
    merged = network.merge([*features, network.forward_backbone(*search)])
    tokens, mask = merged.tokens, merged.padding_mask
    memory = network.forward_encoder(tokens, mask)
    decoded = network.forward_decoder(memory, mask)
    _save(StageModule(network, "forward_decoder"), (memory, mask), folder / "decoder.pt", aoti)
    _save(StageModule(network, "forward_box_head"), (memory, decoded), folder / "box_head.pt", aoti)
    _save(StageModule(network, "forward_confidence"), (decoded,), folder / "confidence.pt", aoti)
    if spec.graph == "heads":
        context = network.transformer.encoder_context(mask)
        assert isinstance(context, EncoderContext)
        x = tokens
        for index, layer in enumerate(network.transformer.transformer):
            q, k, v = layer.project(x)
            _save(_Project(layer), (x,), folder / f"layer{index}_project.pt")
            for h, head in enumerate(layer.attend.heads):
                _save(
                    _Head(head, layer, context),
                    (q, k, v, mask),
                    folder / f"layer{index}_head{h}.pt",
                )
            attended = layer(x, context)  # only for the next layer's example input
            _save(_Finish(layer), (x, torch.zeros_like(x)), folder / f"layer{index}_finish.pt")
            x = attended
    else:
        _save(StageModule(network, "forward_encoder"), (tokens, mask), folder / "encoder.pt", aoti)
    manifest = {
        "format": MODEL_FORMAT,
        "executor": executor,
        "device": str(device),
        "template_size": config.template_size,
        "search_size": config.search_size,
        "num_templates": config.num_templates,
        "enc_layers": config.enc_layers,
        "num_heads": config.num_heads,
        "channels_last": int(memory_format is torch.channels_last),
        "torch": torch.__version__,
    }
    atomic_write_text(folder / "manifest.txt", "".join(f"{k} {v}\n" for k, v in manifest.items()))
    return folder
