"""The multi-model runtime: exact job splits, the MT runner, baselines, failures."""

from __future__ import annotations

import time
from functools import partial

import pytest
import torch
import torch.fx
from torch import nn

from headway.errors import InputError
from headway.models import create_model
from headway.runtime.jobs import ModelInstance, layer_sequence, split_jobs
from headway.runtime.multi_model import (
    JobCoalescer,
    run_batched,
    run_multiprocess,
    run_multithread,
    run_sequential,
)
from headway.runtime.pool import StreamWorkerPool
from headway.transforms.tucker import decompose_model
from headway.vision.serving import ModelSpec, build_instance, parse_models

SMALL = {
    "vgg16": {"width": 0.125},
    "resnet50": {"width": 8},
    "alexnet": {},
    "squeezenet1_1": {},
    "inception_v3": {},
}


def run_jobs(jobs: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for job in jobs:
        x = job(x)
    return x


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("policy", ["layers", "jobs:3", "macs:4"])
def test_jobs_reproduce_the_model_exactly(name: str, policy: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, small_input=True, **SMALL[name]).eval()
    x = torch.randn(2, 3, 32, 32)
    jobs = split_jobs(model, policy, x)
    if policy != "layers":
        assert len(jobs) == int(policy.split(":")[1])
    with torch.no_grad():
        torch.testing.assert_close(run_jobs(jobs, x), model(x), rtol=0, atol=0)


def test_decomposed_convolution_counts_as_three_layers() -> None:
    torch.manual_seed(0)
    model = create_model("vgg16", num_classes=10, small_input=True, width=0.125).eval()
    x = torch.randn(1, 3, 32, 32)
    decomposed, report = decompose_model(model, x, "ratio:0.5", min_rank=1)
    extra = 2 * sum(1 for r in report.layers if r.status == "decomposed")
    assert len(layer_sequence(decomposed)) == len(layer_sequence(model)) + extra
    with torch.no_grad():
        torch.testing.assert_close(run_jobs(split_jobs(decomposed, "jobs:5"), x), decomposed(x))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if x.sum() > 0 else x  # fx cannot trace a data-dependent branch


def test_any_traceable_model_is_cut_into_jobs_and_served_exactly() -> None:
    """A torchvision-structured ResNet (stand-in classes, not headway's; torchvision is not in
    `make test`'s set-up) has no layer_sequence(): torch.fx cuts it where one tensor is live,
    and the MT runtime serving its jobs returns the model's own output."""
    from test_fold import StandInResNet, randomise_norms

    torch.manual_seed(11)
    model = randomise_norms(StandInResNet(), seed=12)
    example = torch.randn(1, 3, 32, 32)
    layers = layer_sequence(model)
    assert len(layers) > 4 and all(isinstance(layer, torch.fx.GraphModule) for layer in layers)
    jobs = split_jobs(model, "macs:4", example)
    assert len(jobs) == 4
    with torch.inference_mode():
        expected = model(example)
        out = example
        for job in jobs:
            out = job(out)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    instances = [ModelInstance(f"standin#{i}", jobs, example) for i in range(2)]
    result = run_multithread(instances, requests=3, workers=2)
    assert not result.errors
    for output in result.last_outputs.values():
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)


class StandInViT(nn.Module):
    """timm's VisionTransformer call structure: ``forward(x, attn_mask=None)`` calls
    ``forward_features`` then ``forward_head``; the blocks are a plain sequence."""

    def __init__(self, dim: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
                for _ in range(depth)
            )
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    @staticmethod
    def block(dim: int) -> nn.Module:
        return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if attn_mask is not None:
            x = x * attn_mask
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, scale: float = 1.0
    ) -> torch.Tensor:  # timm 1.0.31 passes more defaulted arguments on (is_causal=False)
        return self.forward_head(self.forward_features(x, attn_mask)) * scale


def test_a_timm_style_vit_splits_into_jobs() -> None:
    """Its forward takes one tensor and an optional mask: traced with the default (timm's ViT
    was refused as "3 inputs")."""
    torch.manual_seed(13)
    model = StandInViT().eval()
    x = torch.randn(2, 3, 16, 16)
    jobs = split_jobs(model, "jobs:3", x)
    with torch.inference_mode():
        torch.testing.assert_close(run_jobs(jobs, x), model(x), rtol=0, atol=0)

    class TwoInputs(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    with pytest.raises(InputError, match=r"needs 2 inputs \(x, y\), not one tensor"):
        split_jobs(TwoInputs(), "layers")


def test_policy_errors() -> None:
    model = create_model("alexnet", num_classes=10, small_input=True)
    with pytest.raises(InputError, match="cannot split a model of"):
        split_jobs(model, "jobs:999")
    with pytest.raises(InputError, match="unknown job policy"):
        split_jobs(model, "halves")
    with pytest.raises(InputError, match="needs an example"):
        split_jobs(model, "macs:2")
    with pytest.raises(InputError, match=r"torch\.fx cannot trace it"):
        layer_sequence(DataDependent())
    assert parse_models("vgg16:3,alexnet") == [("vgg16", 3), ("alexnet", 1)]
    for bad, message in [
        ("vgg19:1", "unknown model"),
        ("vgg16:0", "at least 1"),
        ("vgg16:x", "integer"),
    ]:
        with pytest.raises(InputError, match=message):
            parse_models(bad)


def tiny_instances() -> list[ModelInstance]:
    spec = ModelSpec("alexnet")
    shared = build_instance(spec, "alexnet", "jobs:3")
    return [ModelInstance(f"alexnet#{i}", shared.jobs, shared.example) for i in range(3)]


def test_multithread_sequential_and_batched_runs() -> None:
    instances = tiny_instances()
    # the model's own answer: the same spec built whole (same seed), not through the jobs
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("alexnet", num_classes=10, small_input=True).eval()
    with torch.inference_mode():
        expected = model(instances[0].example)
    assert expected.shape == (1, 10) and expected.abs().sum() > 0
    for result in (
        run_multithread(instances, requests=4, workers=2),
        run_multithread(instances, requests=4, workers=2, coalesce=3),
        run_sequential(instances, requests=4),
        run_batched(instances, requests=4),
    ):
        assert not result.errors
        assert all(len(v) == 4 for v in result.latencies_ms.values())
        assert result.throughput > 0
        assert set(result.summary()) == {i.name for i in instances}
        assert set(result.last_outputs) == {i.name for i in instances}
        for output in result.last_outputs.values():  # batching may reorder the sums slightly
            torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)


def test_coalesced_requests_get_their_own_rows_in_fifo_order() -> None:
    torch.manual_seed(5)
    shared = nn.Sequential(nn.Linear(6, 4), nn.ReLU()).eval()
    other = nn.Linear(6, 4).eval()
    inputs = [torch.randn(1 + i % 2, 6) for i in range(9)]  # requests of 1 and 2 rows
    with StreamWorkerPool(1, "cpu") as pool:
        blocker = pool.submit(time.sleep, 0.2)  # the requests pile up meanwhile
        coalescer = JobCoalescer(pool, limit=4)
        futures = [coalescer.submit(other if i == 4 else shared, x) for i, x in enumerate(inputs)]
        blocker.result()
        results = [f.result() for f in futures]
    with torch.no_grad():
        for i, (x, got) in enumerate(zip(inputs, results, strict=True)):
            expected = (other if i == 4 else shared)(x)
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # FIFO: the oldest request leads; requests 0-3 and 5 share ``shared``, limit 4 per batch
    assert coalescer.batch_sizes == [4, 1, 4]
    with pytest.raises(InputError, match="at least 1"):
        JobCoalescer(pool, 0)


def test_a_coalesced_batch_failure_reaches_every_request_and_mt_runs_with_coalescing() -> None:
    with StreamWorkerPool(1, "cpu") as pool:
        coalescer = JobCoalescer(pool, limit=8)
        broken = Broken()
        futures = [coalescer.submit(broken, torch.ones(1, 2)) for _ in range(3)]
        for future in futures:
            with pytest.raises(RuntimeError, match="exploded"):
                future.result()
    instances = tiny_instances()
    result = run_multithread(instances, requests=4, workers=2, coalesce=3)
    assert not result.errors and all(len(v) == 4 for v in result.latencies_ms.values())
    assert 1 <= result.notes["mean_batch"] <= 3


class Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("layer exploded")


def test_a_failing_model_is_named_and_does_not_stop_the_others() -> None:
    instances = tiny_instances()
    instances.append(
        ModelInstance("broken#0", [instances[0].jobs[0], Broken()], instances[0].example)
    )
    result = run_multithread(instances, requests=3, workers=2)
    assert result.errors == {"broken#0": "RuntimeError: layer exploded"}
    assert all(len(result.latencies_ms[i.name]) == 3 for i in instances[:3])


@pytest.mark.slow
def test_multiprocess_baseline_keeps_finished_results() -> None:
    import os
    import time

    specs = {"alexnet#0": ModelSpec("alexnet"), "bad#0": ModelSpec("no_such_model")}
    builders = {name: partial(build_instance, spec, name) for name, spec in specs.items()}
    builders["dies#0"] = partial(os._exit, 3)  # killed while building: it never says so
    began = time.perf_counter()
    result = run_multiprocess(builders, requests=2, threads_per_process=1, timeout_s=120)
    assert time.perf_counter() - began < 100  # nobody waited out the 120 s for the dead one
    assert len(result.latencies_ms["alexnet#0"]) == 2
    assert "bad#0" in result.errors and "no_such_model" in result.errors["bad#0"]
    assert result.errors["dies#0"] == "process exited with code 3"


def test_experiment_cases_take_turns_over_rounds() -> None:
    from headway.experiments.multidnn import coalesce_limit, run_cases

    assert coalesce_limit("vgg16:8") == 4 and coalesce_limit("vgg16:3,resnet152:1") == 2
    seen: list[str] = []
    result = run_cases(
        "alexnet:2", [("MT", "mt", None), ("MT+c", "mt+coalesce", None)], 2, seen.append, rounds=2
    )
    assert seen == ["MT, round 1/2", "MT+c, round 1/2", "MT, round 2/2", "MT+c, round 2/2"]
    for row in result["cases"].values():
        assert len(row["throughputs"]) == 2 and row["throughput"] > 0 and not row["errors"]
        assert set(row["per_model_ms"]) == {"alexnet"}
    assert result["cases"]["MT+c"]["notes"]["coalesce"] == 2


@pytest.mark.cuda
def test_coalesced_mt_on_cuda_matches_the_cpu_model() -> None:
    torch.manual_seed(2)
    shared = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)).eval()
    example = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        expected = shared(example)
    cuda_model = shared.to("cuda")
    with StreamWorkerPool(2, "cuda") as pool:
        coalescer = JobCoalescer(pool, limit=4)
        futures = [coalescer.submit(cuda_model, example.cuda()) for _ in range(8)]
        results = [f.result().cpu() for f in futures]
    for got in results:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    result = run_multithread(
        [ModelInstance(f"m#{i}", [cuda_model], example.cuda()) for i in range(4)],
        requests=3,
        workers=2,
        device="cuda",
        coalesce=2,
    )
    assert not result.errors and all(len(v) == 3 for v in result.latencies_ms.values())


class StandInVGG(nn.Module):
    """torchvision's VGG layout (features / avgpool / classifier, flatten in forward)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in (8, "M", 16, "M", 16, 16, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width)]
                layers.append(nn.ReLU(inplace=True))
                channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(True), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@pytest.mark.parametrize("architecture", ["resnet", "vgg"])
def test_your_model_folded_decomposed_split_and_served(architecture: str) -> None:
    """The whole bring-your-own-model path on torchvision-structured stand-ins (torchvision is
    not in `make test`'s set-up): BN folding (every pair), Tucker-2, MAC-balanced jobs, MT
    serving — each step equal to the model it came from."""
    from headway.transforms.fold import fold_batchnorm
    from test_fold import StandInResNet, randomise_norms

    torch.manual_seed(13)
    model = randomise_norms(StandInResNet() if architecture == "resnet" else StandInVGG(), 14)
    example = torch.randn(1, 3, 32, 32)
    folded, fold_report = fold_batchnorm(model)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fold_report.layers == norms and not fold_report.skipped
    decomposed, report = decompose_model(folded, example.repeat(2, 1, 1, 1), "ratio:0.5")
    assert any(layer.status == "decomposed" for layer in report.layers)
    jobs = split_jobs(decomposed, "macs:3", example)
    with torch.inference_mode():
        torch.testing.assert_close(folded(example), model(example), rtol=1e-4, atol=1e-5)
        expected = decomposed(example)
        out = example
        for job in jobs:
            out = job(out)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    result = run_multithread([ModelInstance("mine#0", jobs, example)], requests=2, workers=2)
    assert not result.errors
    torch.testing.assert_close(result.last_outputs["mine#0"], expected, rtol=1e-5, atol=1e-6)


def test_instances_load_a_checkpoint(tmp_path) -> None:
    torch.manual_seed(15)
    trained = create_model("alexnet", num_classes=10, small_input=True).eval()
    path = tmp_path / "alexnet.pth"
    torch.save(trained.state_dict(), path)
    instance = build_instance(ModelSpec("alexnet", checkpoint=str(path), seed=3), "a#0")
    with torch.inference_mode():
        out = instance.example
        for job in instance.jobs:
            out = job(out)
        torch.testing.assert_close(out, trained(instance.example), rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["mp", "mt", "seq", "batched"])
def test_every_mode_runs_on_cuda(mode: str) -> None:
    """Paper B's cases on one GPU: MP processes each move their model to CUDA (one context
    each), the in-process modes share it; every request is answered."""
    from headway.vision.serving import run_mode

    specs = {f"alexnet#{i}": ModelSpec("alexnet") for i in range(2)}
    result = run_mode(mode, specs, requests=3, device="cuda")
    assert not result.errors
    assert all(len(v) == 3 for v in result.latencies_ms.values())
