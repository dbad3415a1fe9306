"""OpenVINO's bf16 hint on CSWinTT encoder graphs: the largest difference from eager for one
default layer whose 8 heads all have window w (w = 1, 2, 4, 8), for the exported eager graph and
headway's fused and spectral graphs, and for the whole default encoder with and without padding.
Needs a CPU with bf16 instructions to mean anything (elsewhere the hint runs fp32).

    python benchmarks/openvino_bf16_windows.py
"""

from __future__ import annotations

import torch

from headway.experiments.engines import _case, _Encoder
from headway.models.cswintt import build_cswintt, get_config
from headway.runtime.engines import compile_module
from headway.transforms.heads import fuse_window_attention
from headway.transforms.spectral import spectral_window_attention


def largest_difference(
    module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], expected
) -> float:
    engine = compile_module("openvino-bf16", module, inputs)
    return float((engine(*inputs) - expected).abs().max())


def main() -> None:
    graphs = {"eager": lambda n: n, "fused": lambda n: fuse_window_attention(n)[0],
              "spectral": lambda n: spectral_window_attention(n)[0]}  # fmt: skip
    print("one default layer, all heads of window w: max |bf16 − eager| per graph")
    for window in (1, 2, 4, 8):
        torch.manual_seed(0)
        config = get_config("default", enc_layers=1, window_sizes=(window,) * 8)
        network = build_cswintt(config).eval()
        tokens = torch.randn(config.num_tokens, 1, config.d_model)
        padding = torch.zeros(1, config.num_tokens, dtype=torch.bool)
        with torch.inference_mode():
            expected = network.forward_encoder(tokens, padding)
            inputs = (tokens, padding)
            cells = [
                f"{name} {largest_difference(_Encoder(build(network)), inputs, expected):.3g}"
                for name, build in graphs.items()
            ]
        print(f"  w = {window}: " + ", ".join(cells))
    case = _case("cswintt_encoder", 1)
    tokens, padding = case.inputs
    print("whole default encoder: max |bf16 − eager|")
    for label, mask in (("padded", padding), ("no padding", torch.zeros_like(padding))):
        with torch.inference_mode():
            expected = case.model(tokens, mask)
            cells = [
                f"{graph} {largest_difference(module, (tokens, mask), expected):.3g}"
                for graph, module in case.graphs.items()
            ]
        print(f"  {label}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
