"""Where the time of one ``headway bench engines`` case goes, for one of headway's variants:
torch.profiler's operator table over a few calls, the operators per call, and the share and
rate (GFLOP/s) of the linear layers. Backs the profiles quoted in docs/benchmarks.md.

    python benchmarks/profile_case.py --case cswintt_encoder --variant spectral --threads 2
    python benchmarks/profile_case.py --case deit_tiny --batch 32 --variant "oneDNN linears"
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from headway.experiments.engines import CASES, _case

LINEAR_OPS = ("aten::addmm", "aten::mm", "mkldnn::_linear_pointwise")
# operators that only describe memory (no kernel of their own), or that call others
METADATA = {
    "as_strided", "view", "reshape", "expand", "transpose", "permute", "narrow", "split",
    "unbind", "t", "select", "slice", "unsqueeze", "squeeze", "empty", "empty_like", "detach",
    "alias", "_unsafe_view", "unflatten", "flatten", "view_as", "contiguous", "linear",
    "matmul", "softmax", "dropout", "layer_norm", "chunk", "clone", "to", "_to_copy", "lift_fresh",
    "resolve_conj", "resolve_neg", "result_type", "split_with_sizes", "conv2d", "convolution",
    "_convolution", "max_pool2d", "adaptive_avg_pool2d", "dropout_",
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=CASES, default="cswintt_encoder")
    parser.add_argument("--variant", default="spectral", help="headway variant, or 'eager'")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    case = _case(args.case, args.batch)
    module = case.model if args.variant == "eager" else case.headway[args.variant]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        case.model(*case.inputs)  # the same linear layers, counted on the plain model
    with torch.inference_mode():
        for _ in range(3):
            module(*case.inputs)
        with profile() as prof:
            for _ in range(args.calls):
                module(*case.inputs)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / args.calls / 1e3
    linear = sum(e.self_cpu_time_total for e in events if e.key in LINEAR_OPS) / args.calls / 1e3
    calls = sum(e.count for e in events if e.key.split("::")[-1] not in METADATA) / args.calls
    counts = counter.get_flop_counts()["Global"]
    linear_flops = sum(v for k, v in counts.items() if str(k) in ("aten.addmm", "aten.mm"))
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    print(
        f"{args.case} / {args.variant}, batch {args.batch}, {args.threads} threads: "
        f"{total:.1f} ms of operator time per call, {calls:.0f} computing operator calls per "
        f"call; linear layers {linear:.1f} ms ({100 * linear / total:.0f}%)"
        + (f" at {linear_flops / linear / 1e6:.0f} GFLOP/s" if linear and linear_flops else "")
    )


if __name__ == "__main__":
    main()
