"""How long one engine runs slow in another one's wake: a whole-model ONNX Runtime session
(its own settings: threads that spin-wait after a call) is called, then, after a pause, an
OpenVINO graph of the same model (fp32, and INT8 where NNCF is installed) is called several
times and each call is timed. The pause that makes the calls as fast as after the OpenVINO
graph itself is the pause headway's interleaved timer keeps between variants
(``tuning.SETTLE_S``).

The model is the digits VGG-16-BN ×0.25 at batch 64 (random weights: speed does not depend on
them). Prints the median of each call position over the repeats, per pause; writes JSON.

    python benchmarks/engine_wake.py [--repeats 5] [--calls 6] [--json wake.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from headway.io import atomic_write_text
from headway.models import create_model
from headway.runtime.engines import compile_openvino, export_onnx, open_onnxruntime
from headway.runtime.int8 import int8_missing, quantize

PAUSES_MS = (0, 5, 10, 20, 50, 100)


def _call_ms(run: Callable[[], object], calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.repeats < 1 or args.calls < 1:
        parser.error("need --repeats ≥ 1 and --calls ≥ 1")
    if args.json is not None and (args.json.is_dir() or not args.json.parent.is_dir()):
        parser.error(f"--json {args.json}: not a file in an existing folder")
    torch.manual_seed(0)
    model = create_model("vgg16_bn", num_classes=10, small_input=True, width=0.25).eval()
    x = torch.randn(64, 3, 32, 32)
    path = export_onnx(model, (x,))
    session = open_onnxruntime(path, standalone=True)  # as accelerate runs a whole model
    name = session.get_inputs()[0].name
    feed = {name: x.numpy()}

    def ort() -> object:
        return session.run(None, feed)

    followers: dict[str, Callable[[], object]] = {}
    fp32 = compile_openvino(path, "f32", hint="LATENCY")
    followers["openvino fp32"] = lambda: fp32(x.numpy())
    if int8_missing() is None:
        calibration = [torch.randn(64, 3, 32, 32) for _ in range(4)]
        int8 = quantize(model, (x,), calibration)
        followers["openvino int8"] = lambda: int8(x)
    else:
        print(f"INT8 left out: {int8_missing()}")
    record: dict[str, dict[str, list[float]]] = {}
    for label, follower in followers.items():
        _call_ms(follower, 3)  # warm-up: compilation, first-call allocations
        rows: dict[str, list[list[float]]] = {}
        for _ in range(args.repeats):
            for pause in PAUSES_MS:
                _call_ms(ort, 3)
                time.sleep(pause / 1e3)
                rows.setdefault(f"after ONNX Runtime, {pause} ms pause", []).append(
                    _call_ms(follower, args.calls)
                )
            _call_ms(follower, 3)
            rows.setdefault("after itself", []).append(_call_ms(follower, args.calls))
        print(f"\n{label}: ms per call, by position after the other engine (median of "
              f"{args.repeats})")  # fmt: skip
        record[label] = {}
        for row, samples in rows.items():
            medians = [statistics.median(column) for column in np.array(samples).T]
            record[label][row] = medians
            print(f"  {row:34s} " + " ".join(f"{m:6.1f}" for m in medians))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
