"""fp32 GEMM rate of the CSWinTT encoder's FFN products with the libraries in play: PyTorch's
``F.linear`` (MKL SGEMM on x86), oneDNN on a packed weight (headway's ``PackedLinear``) and
OpenVINO (a one-MatMul model), timed in alternating blocks in one process; GFLOP/s.

    python benchmarks/bench_gemm.py --threads 2
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from torch import nn

from headway.runtime.engines import compile_module, engine_available
from headway.transforms.packing import PackedLinear
from headway.tuning import interleaved_medians

SHAPES = ((704, 256, 2048), (704, 2048, 256))  # tokens × d_model → FFN hidden, and back


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for rows, inner, outer in SHAPES:
        torch.manual_seed(0)
        linear = nn.Linear(inner, outer).eval()
        x = torch.randn(rows, inner)
        variants = {
            "F.linear (MKL)": partial(linear, x),
            "oneDNN packed": partial(PackedLinear(linear), x),
        }
        if engine_available("openvino"):
            variants["OpenVINO"] = partial(
                compile_module("openvino", linear, x, threads=args.threads), x
            )
        with torch.inference_mode():
            seconds = interleaved_medians(variants, min_run_time=args.seconds)
        flop = 2 * rows * inner * outer
        rates = ", ".join(f"{k} {flop / v / 1e9:.0f}" for k, v in seconds.items())
        print(f"{rows}×{inner}×{outer}, {args.threads} threads, GFLOP/s: {rates}")


if __name__ == "__main__":
    main()
