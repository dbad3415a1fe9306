"""INT8 post-training quantization with NNCF (OpenVINO's compression library), run by OpenVINO:
one of ``headway.accelerate(..., max_drop=)``'s approximate candidates (issue 33), alone or
under Tucker-2 and under sparse attention + token pruning.

The module is exported to ONNX with a free batch dimension, read by OpenVINO, and quantized by
``nncf.quantize`` with statistics from the calibration batches (the user's data). The result
runs on OpenVINO's CPU plugin, compiled once per input shape. It is approximate: it is scored
on the user's data like every approximation, never checked against a tolerance.

NNCF is an optional extra (``pip install 'headway[int8]'``); without it every other path works,
and asking for INT8 says how to install it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headway.errors import InputError
from headway.runtime.engines import compile_openvino, engine_available, export_onnx

MIN_NNCF = (2, 14)  # the OpenVINO backend's quantize() with fast bias correction
INSTALL_HINT = "pip install 'headway[int8]'"
MAX_SHAPES = 8  # input shapes compiled (each a compiled model of the graph)
WAY = "int8@openvino"


def int8_missing() -> str | None:
    """Why INT8 cannot run here (one line with the fix), or None when it can."""
    if not engine_available("openvino"):
        return f"INT8 runs on OpenVINO, which is not installed: {INSTALL_HINT}"
    try:
        import nncf
    except ImportError:
        return f"INT8 needs NNCF (OpenVINO's compression library), not installed: {INSTALL_HINT}"
    from packaging.version import InvalidVersion, Version  # NNCF's own dependency

    found = getattr(nncf, "__version__", "0")
    try:
        too_old = Version(found).release < MIN_NNCF
    except InvalidVersion:
        too_old = True
    if too_old:
        wanted = ".".join(map(str, MIN_NNCF))
        return f"INT8 needs NNCF ≥ {wanted}, found {found}: {INSTALL_HINT}"
    return None


def require_int8() -> None:
    """One line naming what is missing (and how to install it) when INT8 cannot run."""
    missing = int8_missing()
    if missing is not None:
        raise InputError(missing)


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF's progress bars (rich, on stdout) and info lines kept out of the caller's
    output: headway reports the search itself."""
    import nncf

    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def quantize(
    module: nn.Module,
    example: Sequence[torch.Tensor],
    calibration: Sequence[torch.Tensor],
    cache_dir: Path | None = None,
    transformer: bool = False,
) -> Int8Module:
    """``module`` (one input) quantized to INT8 by NNCF on OpenVINO, with activation ranges
    from ``calibration`` (batches shaped like ``example`` but for the batch size).
    ``transformer``: NNCF's transformer recipe (SmoothQuant, and the attention's softmax and
    the norms kept in float), without which a random-weight DeiT-Tiny's top-1 agreed with the
    float model on 40% of the images."""
    require_int8()
    import nncf
    import openvino as ov

    if len(example) != 1:
        raise InputError("INT8 takes models of one input")
    if not calibration:
        raise InputError("INT8 needs calibration batches")
    path = export_onnx(module.eval(), tuple(example), cache_dir, dynamic_batch=True)
    model = ov.Core().read_model(str(path))
    dataset = nncf.Dataset(list(calibration), lambda batch: batch.detach().contiguous().numpy())
    unscalable = _non_finite_constant_users(model)
    with _quiet_nncf():
        quantized = nncf.quantize(
            model,
            dataset,
            # a transformer: NNCF's own choice for it (mixed: asymmetric activations)
            preset=None if transformer else nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(calibration),
            model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            ignored_scope=nncf.IgnoredScope(names=unscalable, validate=False)
            if unscalable
            else None,
        )
    return Int8Module(quantized)


def _non_finite_constant_users(model: Any) -> list[str]:
    """The operations that read a constant holding ±inf or NaN (a static attention mask's
    −inf): NNCF would quantize such a constant like a weight, and no INT8 scale holds an
    infinity. Token pruning gathers the mask's rows by the surviving ids, a Gather that NNCF
    takes for an embedding: quantized, a pruned digits DeiT scored 4.2% where its float
    graph scored 86.4% (``benchmarks/accelerate_budget.py --model deit_digits``)."""
    names = []
    for op in model.get_ordered_ops():
        for value in op.input_values():
            source = value.get_node()
            if source.get_type_name() != "Constant":
                continue
            data = source.get_data()
            if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
                names.append(op.get_friendly_name())
                break
    return names


class Int8Module(nn.Module):
    """A quantized OpenVINO graph called like the module it came from (one input tensor, CPU;
    a single output unwrapped): compiled with OpenVINO's LATENCY hint for each new input shape
    (up to :data:`MAX_SHAPES`). Safe to call from several threads (an infer request each).
    ``pickle`` and ``copy.deepcopy`` carry the graph (its IR text and weights)."""

    def __init__(self, graph: Any) -> None:
        super().__init__()
        self.graph = graph
        self._compiled: dict[tuple[int, ...], tuple[Any, threading.local]] = {}
        self._lock = threading.Lock()

    def _for_shape(self, shape: tuple[int, ...]) -> tuple[Any, threading.local]:
        with self._lock:
            if shape not in self._compiled:
                if len(self._compiled) >= MAX_SHAPES:
                    raise InputError(
                        f"an INT8 model compiles for {MAX_SHAPES} input shapes at most; "
                        f"{shape} is one more"
                    )
                graph = self.graph.clone()
                graph.reshape(list(shape))
                compiled = compile_openvino(graph, "f32", hint="LATENCY")
                self._compiled[shape] = (compiled, threading.local())
            return self._compiled[shape]

    def forward(self, x: torch.Tensor) -> Any:
        if not isinstance(x, torch.Tensor) or x.device.type != "cpu":
            raise InputError("an INT8 model takes one CPU tensor")
        compiled, local = self._for_shape(tuple(x.shape))
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        results = request.infer([x.detach().contiguous().numpy()])
        outputs = [torch.from_numpy(np.array(results[o], copy=True)) for o in compiled.outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def train(self, mode: bool = True) -> Int8Module:
        if mode:
            raise InputError("an INT8 model runs inference only; train the float module")
        return super().train(False)

    def write_graph(self, fmt: str, path: Path) -> Callable[..., list[torch.Tensor]]:
        """Write the graph as ``fmt`` (``openvino`` IR only: NNCF's OpenVINO graph has no ONNX
        form) and return a callable running the written file (for the export's check)."""
        import openvino as ov

        if fmt != "openvino":
            raise InputError(f"an INT8 model is written as OpenVINO IR only, not {fmt}")
        ov.save_model(self.graph, str(path), compress_to_fp16=False)
        compiled = compile_openvino(Path(path))
        return lambda *args: [
            torch.from_numpy(np.array(compiled([a.numpy() for a in args])[o], copy=True))
            for o in compiled.outputs
        ]

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        import tempfile

        import openvino as ov

        with tempfile.TemporaryDirectory() as folder:
            xml = Path(folder) / "model.xml"
            ov.save_model(self.graph, str(xml), compress_to_fp16=False)
            text, weights = xml.read_text(), xml.with_suffix(".bin").read_bytes()
        return (_restore, (text, weights))


def _restore(text: str, weights: bytes) -> Int8Module:
    import openvino as ov

    tensor = ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy())
    return Int8Module(ov.Core().read_model(model=text, weights=tensor))
