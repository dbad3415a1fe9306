"""Tucker-2 decomposition: exactness at full rank, MAC formulas against the counter, rank rules,
reports, errors, and saving/loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from headway.cli import app
from headway.errors import InputError
from headway.models import create_model
from headway.transforms.tucker import (
    RankRule,
    count_macs,
    decompose_model,
    energy_rank,
    evbmf_rank,
    load_decomposed,
    tucker2_conv,
    tucker2_macs,
)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.Conv2d(6, 10, (3, 5), padding=(1, 2), dilation=1, bias=False),
        nn.Conv2d(5, 7, 3, padding=2, dilation=2, padding_mode="reflect"),
    ],
)
def test_full_rank_decomposition_is_exact(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, conv.in_channels, 11, 13)
    replacement = tucker2_conv(conv, conv.in_channels, conv.out_channels)
    assert replacement[1].stride == conv.stride and replacement[1].dilation == conv.dilation
    assert (replacement[2].bias is None) == (conv.bias is None)
    with torch.no_grad():
        torch.testing.assert_close(replacement(x), conv(x), rtol=1e-4, atol=1e-5)


def test_mac_formula_matches_the_counter() -> None:
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1)
    x = torch.randn(1, 16, 15, 17)
    out_hw = tuple(conv(x).shape[-2:])
    replacement = tucker2_conv(conv, 5, 7)
    assert count_macs(replacement, x) == tucker2_macs(conv, 5, 7, (15, 17), out_hw)


def test_rank_rules() -> None:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 90)) * 3
    assert evbmf_rank(signal + 0.05 * rng.normal(size=signal.shape)) == 5
    assert evbmf_rank(np.zeros((10, 20))) == 0
    assert energy_rank(np.diag([3.0, 2.0, 1.0]), 0.9) == 2  # 9/14, 13/14
    assert RankRule.parse("vbmf") == RankRule("vbmf", 0.75)
    for bad, message in [
        ("ratio:1.5", r"\(0, 1\]"),
        ("macs:1", r"\(0, 1\)"),
        ("rank:2.5", "positive integer"),
        ("svd:3", "unknown rank rule"),
        ("energy", "needs a value"),
    ]:
        with pytest.raises(InputError, match=message):
            RankRule.parse(bad)


def small_vgg() -> nn.Module:
    torch.manual_seed(1)
    return create_model("vgg16", num_classes=10, small_input=True, width=0.125).eval()


def test_decompose_reports_and_leaves_the_input_alone() -> None:
    model = small_vgg()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    decomposed, report = decompose_model(model, x, "ratio:0.5", min_rank=2)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert report.macs_after == count_macs(decomposed, x) // 2
    assert report.macs_after < report.macs_before
    rows = {r.name: r for r in report.layers}
    assert rows["features.2"].status == "decomposed"
    assert (rows["features.2"].rank_in, rows["features.2"].rank_out) == (4, 4)
    assert 0 <= rows["features.2"].weight_error < 1 and rows["features.2"].output_error > 0
    assert sum(r.macs_after for r in report.layers) <= report.macs_after
    with torch.no_grad():
        assert decomposed(x).shape == (2, 10)


def test_mac_budget_is_met() -> None:
    model = small_vgg()
    x = torch.randn(1, 3, 32, 32)
    _, report = decompose_model(model, x, "macs:0.3", min_rank=1)
    assert report.macs_after <= 0.3 * report.macs_before * 1.02
    assert report.macs_after >= 0.2 * report.macs_before


def test_skips_and_errors() -> None:
    torch.manual_seed(2)
    resnet = create_model("resnet50", num_classes=10, small_input=True, width=8).eval()
    _, report = decompose_model(resnet, torch.randn(1, 3, 32, 32), "ratio:0.5", min_rank=1)
    reasons = {r.reason for r in report.layers if r.status == "skipped"}
    assert "1x1 kernel" in reasons
    grouped = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1))
    with pytest.raises(InputError, match="no decomposable convolution"):
        decompose_model(grouped, torch.randn(1, 8, 9, 9), "ratio:0.5")
    with pytest.raises(InputError, match=r"rank 64 exceeds the channels of layer features\.0"):
        decompose_model(small_vgg(), torch.randn(1, 3, 32, 32), "rank:64")


def test_cli_saves_a_model_that_loads_back(tmp_path: Path) -> None:
    out = tmp_path / "vgg_tucker.pt"
    args = [
        "compress",
        "tucker",
        "squeezenet1_1",  # VGG-16 took 59 s of HOOI; the command is the same
        "--small-input",
        "--num-classes",
        "10",
        "--rank",
        "ratio:0.25",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "fewer" in result.output and out.with_suffix(".json").is_file()
    model = load_decomposed(out).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    result = CliRunner().invoke(app, ["compress", "tucker", "vgg16", "--rank", "ratio:2"])
    assert result.exit_code == 1 and "error:" in result.output


@pytest.mark.parametrize("rank", ["vbmf", "energy:0.9"])
def test_gram_solver_gives_the_full_svds_ranks_and_errors(rank: str) -> None:
    """The default solver (Gram eigendecomposition) against full SVDs (numpy for the rank
    rules, TensorLy's truncated_svd in HOOI): same ranks, same factors up to rounding."""
    from headway.transforms.tucker import gram_svd

    torch.manual_seed(21)
    model = create_model("vgg16", num_classes=10, small_input=True, width=0.25).eval()
    example = torch.randn(2, 3, 32, 32)
    _, full = decompose_model(model, example, rank, svd="full")
    _, gram = decompose_model(model, example, rank, svd="gram")
    for a, b in zip(full.layers, gram.layers, strict=True):
        assert (a.status, a.rank_in, a.rank_out) == (b.status, b.rank_in, b.rank_out)
        if a.status == "decomposed":
            assert abs(a.weight_error - b.weight_error) < 1e-5
    matrix = torch.randn(16, 80, generator=torch.Generator().manual_seed(22))
    u, s, v = gram_svd(matrix, n_eigenvecs=5)
    ref_u, ref_s, ref_v = torch.linalg.svd(matrix, full_matrices=False)
    torch.testing.assert_close(s, ref_s[:5], rtol=1e-5, atol=1e-5)
    low_rank = (ref_u[:, :5] * ref_s[:5]) @ ref_v[:5]  # the best rank-5 approximation
    torch.testing.assert_close((u * s) @ v, low_rank, rtol=0, atol=1e-4)
    torch.testing.assert_close(u.T @ u, torch.eye(5), rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="unknown svd solver"):
        decompose_model(model, example, rank, svd="lapack")


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame: TensorFlow "same" padding computed from each input's size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(
            x.shape[:1:-1],
            self.kernel_size[::-1],
            self.stride[::-1],
            self.dilation[::-1],
            strict=True,
        ):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return nn.functional.conv2d(
            nn.functional.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation
        )


class StandardisedConv(nn.Conv2d):
    """timm's StdConv2d-like: the weight is normalised in forward, so its raw weight's
    decomposition is not what it computes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) * 0.5
        return nn.functional.conv2d(x, weight, self.bias, self.stride, self.padding)


@pytest.mark.parametrize("size", [(32, 32), (31, 29)])
def test_runtime_padding_survives_the_decomposition(size: tuple[int, int]) -> None:
    """tf_efficientnetv2's Conv2dSame failed with a size mismatch (111 vs 112)."""
    torch.manual_seed(5)
    model = nn.Sequential(
        Conv2dSame(16, 32, 3, stride=2, bias=False),
        nn.ReLU(),
        StandardisedConv(32, 32, 3, padding=1),
    ).eval()
    x = torch.randn(1, 16, *size)
    decomposed, report = decompose_model(model, x, "ratio:0.5", min_rank=1)
    status = {r.name: (r.status, r.reason) for r in report.layers}
    assert status["0"][0] == "decomposed", status
    assert isinstance(decomposed[0][1], Conv2dSame)  # the core pads as the original did
    assert status["2"][1] == "StandardisedConv has a forward of its own (not a plain convolution)"
    with torch.no_grad():
        assert decomposed(x).shape == model(x).shape
    exact = tucker2_conv(model[0], 16, 32)  # full ranks: the same function
    with torch.no_grad():
        torch.testing.assert_close(exact(x), model[0](x), rtol=1e-4, atol=1e-5)


def test_inception_input_transform_survives_checkpoints_and_saving(tmp_path: Path) -> None:
    """torchvision's ImageNet Inception-v3 weights need transform_input: one rule for every
    path that loads a checkpoint, and a saved decomposed model keeps it."""
    from headway.models.registry import checkpoint_overrides
    from headway.transforms.tucker import TuckerReport, load_decomposed, save_decomposed

    assert checkpoint_overrides("inception_v3", None, False, "w.pth") == {"transform_input": True}
    assert checkpoint_overrides("inception_v3", 10, False, "w.pth") == {"transform_input": False}
    assert checkpoint_overrides("inception_v3", None, True, "w.pth") == {}
    assert checkpoint_overrides("inception_v3", None, False, None) == {}
    assert checkpoint_overrides("vgg16", None, False, "w.pth") == {}
    # torchvision's own Inception-v3 follows torchvision's rule too (issue 34)
    external = "torchvision:inception_v3"
    assert checkpoint_overrides(external, None, False, "w.pth") == {"transform_input": True}
    assert checkpoint_overrides(external, 10, False, "w.pth") == {"transform_input": False}
    with pytest.raises(InputError, match="do not apply"):
        create_model("torchvision:resnet50", width=2)
    model = create_model("inception_v3", num_classes=10, transform_input=True).eval()
    path = tmp_path / "inception.pt"
    save_decomposed(path, model, TuckerReport("ratio:0.5"), "inception_v3", 10, False)
    assert load_decomposed(path).transform_input
