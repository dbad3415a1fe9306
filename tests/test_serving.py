"""headway serve: the in-process runtime, the repository, and the Open Inference Protocol over
HTTP and gRPC driven by Triton's own clients. Servers listen on 127.0.0.1 (free ports) and
stop at the end of each test; every request loop is bounded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from headway.errors import InputError
from headway.runtime.engines import engine_available
from headway.serving import (
    BadRequest,
    DynamicBatching,
    ModelConfig,
    QueueFull,
    RequestTimeout,
    ServingRuntime,
    TensorSpec,
    load_repository,
    write_example_repository,
)
from headway.serving.server import Server, serve_missing, serving_in_thread

needs_serve = pytest.mark.skipif(serve_missing() is not None, reason="serve extra missing")
SHAPE = (3, 8, 8)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)
    ).eval()


class Slow(nn.Module):
    """Sleeps ``seconds`` per call; raises on an input whose first value is 999."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.reshape(-1)[0]) == 999.0:
            raise RuntimeError("the model refuses this input")
        time.sleep(self.seconds)
        return x * 2


def wait_until_busy(runtime: ServingRuntime, model: str, waiting: int) -> None:
    """Until one batch of ``model`` runs and ``waiting`` requests wait (bounded: 10 s)."""
    queue = runtime.loaded[model]
    deadline = time.monotonic() + 10
    while not (queue.in_flight == 1 and queue.waiting[model] == waiting):
        assert time.monotonic() < deadline, "the slow model never got busy"
        time.sleep(0.005)


def config(name: str, model: nn.Module, backend: str = "torch", **fields: object) -> ModelConfig:
    return ModelConfig(
        name, module=model, backend=backend, inputs=(TensorSpec("x", "FP32", SHAPE),), **fields
    )


def rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, *SHAPE)).astype(np.float32)


def eager(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


BACKENDS = ["torch"] + [b for b in ("onnxruntime", "openvino") if engine_available(b)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_runtime_answers_equal_eager_on_every_backend(backend: str) -> None:
    model = tiny_model(1)
    with ServingRuntime([config("m", model, backend)]) as runtime:
        assert runtime.ready() and not runtime.failed
        for seed, count in ((3, 1), (4, 5)):
            x = rows(count, seed)
            out = runtime.infer("m", {"x": torch.from_numpy(x) if seed == 4 else x})
            assert np.abs(out["output"] - eager(model, x)).max() <= 1e-5
        meta = runtime.metadata("m")
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, *SHAPE]}]
        assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 5]}]
        assert runtime.model_config("m")["max_batch_size"] == 8


def test_auto_backend_is_measured_checked_and_answers_like_eager() -> None:
    model = tiny_model(3)
    with ServingRuntime([config("m", model, "auto", max_batch_size=4)]) as runtime:
        graph = runtime.loaded["m"].graph
        assert graph.notes["auto"] in ("torch", "onnxruntime", "openvino")
        assert runtime.model_config("m")["parameters"]["backend_chosen"]["string_value"] == (
            graph.backend
        )
        x = rows(3, 8)
        assert np.abs(runtime.infer("m", {"x": x})["output"] - eager(model, x)).max() <= 1e-5


def test_dynamic_batches_form_and_equal_unbatched_answers() -> None:
    model = tiny_model(2)
    batching = DynamicBatching(max_queue_delay_us=50_000, preferred=(8,))
    copies = [config(f"copy{i}", model, dynamic_batching=batching) for i in range(2)]
    with ServingRuntime(copies, workers=1) as runtime:
        assert len({id(q) for q in runtime.loaded.values()}) == 1  # copies share one graph
        inputs = [rows(1, 10 + i) for i in range(8)]
        futures = [runtime.submit(f"copy{i % 2}", {"x": x}) for i, x in enumerate(inputs)]
        for x, future in zip(inputs, futures, strict=True):
            assert np.abs(future.result(30)["output"] - eager(model, x)).max() <= 1e-5
        text = runtime.metrics.exposition().decode()
    count = sum(float(line.split()[-1]) for line in text.splitlines() if "batch_size_count" in line)
    total = sum(float(line.split()[-1]) for line in text.splitlines() if "batch_size_sum" in line)
    assert total / count > 1  # batches larger than one formed


def test_bad_inputs_are_refused_before_work_with_one_line() -> None:
    with ServingRuntime([config("m", tiny_model())]) as runtime:
        cases = {
            "no input 'y'": {"y": rows(1, 0)},
            "input 'x' is missing": {},
            "is float64": {"x": rows(1, 0).astype(np.float64)},
            "has shape [1, 3, 8, 7]": {"x": rows(1, 0)[..., :7]},
            "batch size 9": {"x": rows(9, 0)},
        }
        for expected, inputs in cases.items():
            with pytest.raises(BadRequest, match=expected.replace("[", r"\[")) as error:
                runtime.infer("m", inputs)
            assert "\n" not in str(error.value)
        with pytest.raises(BadRequest, match="unknown model 'other'"):
            runtime.infer("other", {"x": rows(1, 0)})
        assert runtime.infer("m", {"x": rows(1, 1)})["output"].shape == (1, 5)


def test_full_queue_and_timeout_and_failing_model_fail_only_their_requests() -> None:
    slow = config("slow", Slow(0.2), max_queue_size=1, dynamic_batching=None)
    with ServingRuntime([slow], workers=1) as runtime:
        first = runtime.submit("slow", {"x": rows(1, 0)})  # running
        wait_until_busy(runtime, "slow", 0)
        second = runtime.submit("slow", {"x": rows(1, 1)})  # waiting: the queue is full
        began = time.monotonic()
        with pytest.raises(QueueFull, match="queue is full"):
            runtime.submit("slow", {"x": rows(1, 2)})
        assert time.monotonic() - began < 0.1
        assert first.result(10)["output"].shape == (1, *SHAPE)
        assert second.result(10)["output"].shape == (1, *SHAPE)
        with pytest.raises(RequestTimeout, match=r"timeout|no answer"):
            runtime.infer("slow", {"x": rows(1, 3)}, timeout=0.05)
        time.sleep(0.3)
        bad = rows(1, 4)
        bad.reshape(-1)[0] = 999.0
        with pytest.raises(Exception, match="refuses this input"):
            runtime.infer("slow", {"x": bad})
        assert runtime.infer("slow", {"x": rows(1, 5)}, timeout=10)["output"].shape[0] == 1


def test_a_model_that_fails_to_load_is_named_and_the_others_serve() -> None:
    broken = ModelConfig("broken", source="./no-such-export", backend="onnxruntime")
    with ServingRuntime([broken, config("m", tiny_model())]) as runtime:
        assert not runtime.ready()
        assert "does not exist" in runtime.failed["broken"]
        assert runtime.infer("m", {"x": rows(1, 0)})["output"].shape == (1, 5)
    with pytest.raises(InputError, match="does not exist"):
        ServingRuntime([broken], strict=True)


# ---------------------------------------------------------------------------------------------
# the repository


def test_repository_reads_the_example_and_names_bad_configs(tmp_path: Path) -> None:
    write_example_repository(tmp_path / "repo")
    names = [c.name for c in load_repository(tmp_path / "repo")]
    assert names == sorted(names) and "vgg16" in names and "vgg16_tucker" in names
    bad = {
        "unknown field 'batch'": "source: vgg16\nbatch: 3\n",
        "backend 'tensorrt'": "source: vgg16\nbackend: tensorrt\n",
        "max_batch_size must be an integer": "source: vgg16\nmax_batch_size: many\n",
        "cannot be read as YAML": "source: [vgg16\n",
        "datatype 'FP8'": "source: vgg16\ninput: [{name: x, datatype: FP8, dims: [3]}]\n",
        "preferred_batch_size 16": (
            "source: vgg16\ndynamic_batching: {preferred_batch_size: [16]}\n"
        ),
    }
    for index, (expected, text) in enumerate(bad.items()):
        folder = tmp_path / f"bad{index}" / "model"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(text)
        with pytest.raises(InputError, match=expected.replace("[", r"\[")) as error:
            load_repository(folder.parent)
        assert "\n" not in str(error.value)
    (tmp_path / "empty" / "model").mkdir(parents=True)
    with pytest.raises(InputError, match=r"has no config\.yaml"):
        load_repository(tmp_path / "empty")
    with pytest.raises(InputError, match="not an empty folder"):
        write_example_repository(tmp_path / "repo")


# ---------------------------------------------------------------------------------------------
# the protocol, through Triton's clients


@pytest.fixture(scope="module")
def server():  # type: ignore[no-untyped-def]
    if serve_missing() is not None:
        pytest.skip("serve extra missing")
    model = tiny_model(5)
    configs = [
        config("m", model, BACKENDS[-1]),
        config("slow", Slow(1.0), max_queue_size=1, dynamic_batching=None),
    ]
    runtime = ServingRuntime(configs, workers=2)
    with serving_in_thread(Server(runtime, "127.0.0.1", 0, 0, 0, max_body=200_000)) as ports:
        yield ports, model, runtime


@needs_serve
def test_triton_clients_get_the_in_process_answers_over_http_and_grpc(server) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpc_client
    import tritonclient.http as http_client

    ports, model, _ = server
    x = rows(3, 21)
    reference = eager(model, x)
    for lib, port in ((http_client, ports.http), (grpc_client, ports.grpc)):
        client = lib.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("m")
        meta = client.get_model_metadata("m")
        config = client.get_model_config("m")
        if lib is http_client:
            assert meta["inputs"][0]["shape"] == [-1, *SHAPE]
            assert config["max_batch_size"] == 8
        else:
            assert list(meta.inputs[0].shape) == [-1, *SHAPE]
            assert config.config.max_batch_size == 8
        for binary in (True, False) if lib is http_client else (True,):
            tensor = lib.InferInput("x", list(x.shape), "FP32")
            if lib is http_client:
                tensor.set_data_from_numpy(x, binary_data=binary)
                wanted = [lib.InferRequestedOutput("output", binary_data=binary)]
            else:
                tensor.set_data_from_numpy(x)
                wanted = [lib.InferRequestedOutput("output")]
            answer = client.infer("m", [tensor], outputs=wanted, request_id="r1")
            assert np.abs(answer.as_numpy("output") - reference).max() <= 1e-5
    with urllib.request.urlopen(f"http://127.0.0.1:{ports.metrics}/metrics") as page:
        assert 'headway_inference_success_total{model="m"}' in page.read().decode()


def _post(
    port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]


def _json_body(name: str = "x", shape: list[int] | None = None, datatype: str = "FP32") -> bytes:
    shape = shape or [1, *SHAPE]
    count = int(np.prod(shape))
    return json.dumps(
        {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": [0.5] * count}]}
    ).encode()


@needs_serve
def test_http_refuses_bad_requests_with_400_and_one_line_then_keeps_serving(server) -> None:  # type: ignore[no-untyped-def]
    ports, _, _ = server
    port = ports.http
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, *SHAPE],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 100},
                }
            ]
        }
    ).encode()
    cases = [
        ("/v2/models/nope/infer", _json_body(), None, "unknown model 'nope'"),
        ("/v2/models/m/infer", _json_body("y"), None, "no input 'y'"),
        ("/v2/models/m/infer", _json_body(datatype="FP64"), None, "is float64"),
        ("/v2/models/m/infer", _json_body(shape=[1, 3, 8, 4]), None, "shape [1, 3, 8, 4]"),
        ("/v2/models/m/infer", _json_body(datatype="BF17"), None, "datatype 'BF17'"),
        ("/v2/models/m/infer", b"{not json", None, "not valid JSON"),
        (
            "/v2/models/m/infer",
            header + b"\0" * 100,
            {"Inference-Header-Content-Length": str(len(header))},
            "100 bytes of data",
        ),
        (
            "/v2/models/m/infer",
            header + b"\0" * 10,
            {"Inference-Header-Content-Length": str(len(header))},
            "runs past the body",
        ),
        (
            "/v2/models/m/infer",
            b"{}",
            {"Inference-Header-Content-Length": "999"},
            "outside the body",
        ),
        ("/v2/models/m/infer", b"x" * 300_000, None, "over the limit"),
    ]
    for path, body, headers, expected in cases:
        status, message = _post(port, path, body, headers)
        assert status == 400, (expected, status, message)
        assert expected in message and "\n" not in message
    status, text = _post(port, "/v2/models/m/infer", _json_body())
    assert status == 200 and json.loads(text)["outputs"][0]["shape"] == [1, 5]


@needs_serve
def test_grpc_refuses_bad_requests_with_invalid_argument(server) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpc_client
    from tritonclient.utils import InferenceServerException

    ports, _, _ = server
    client = grpc_client.InferenceServerClient(f"127.0.0.1:{ports.grpc}")
    for name, array, expected in (
        ("y", rows(1, 0), "no input 'y'"),
        ("x", rows(1, 0).astype(np.float64), "is float64"),
        ("x", rows(1, 0)[..., :5].copy(), "shape [1, 3, 8, 5]"),
    ):
        tensor = grpc_client.InferInput(
            name, list(array.shape), "FP64" if array.dtype == np.float64 else "FP32"
        )
        tensor.set_data_from_numpy(array)
        with pytest.raises(InferenceServerException) as error:
            client.infer("m", [tensor])
        assert "INVALID_ARGUMENT" in str(error.value.status()) and expected in error.value.message()
    tensor = grpc_client.InferInput("x", [1, *SHAPE], "FP32")
    tensor.set_data_from_numpy(rows(1, 0))
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [tensor])
    assert client.infer("m", [tensor]).as_numpy("output").shape == (1, 5)


@needs_serve
def test_full_queue_answers_503_and_unavailable_at_once(server) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpc_client
    from tritonclient.utils import InferenceServerException

    ports, _, runtime = server
    body = _json_body()
    background = [
        threading.Thread(target=_post, args=(ports.http, "/v2/models/slow/infer", body))
        for _ in range(2)
    ]
    background[0].start()  # one runs, one waits: the queue (1) is full
    wait_until_busy(runtime, "slow", 0)
    background[1].start()
    wait_until_busy(runtime, "slow", 1)
    began = time.monotonic()
    status, message = _post(ports.http, "/v2/models/slow/infer", body)
    assert status == 503 and "queue is full" in message
    assert time.monotonic() - began < 0.1
    client = grpc_client.InferenceServerClient(f"127.0.0.1:{ports.grpc}")
    tensor = grpc_client.InferInput("x", [1, *SHAPE], "FP32")
    tensor.set_data_from_numpy(rows(1, 0))
    wait_until_busy(runtime, "slow", 1)
    with pytest.raises(InferenceServerException) as error:
        client.infer("slow", [tensor])
    assert "UNAVAILABLE" in str(error.value.status())
    for thread in background:
        thread.join(10)
    timed = json.loads(body)
    timed["parameters"] = {"timeout": 50_000}  # microseconds, as Triton's
    status, message = _post(ports.http, "/v2/models/slow/infer", json.dumps(timed).encode())
    assert status == 504 and ("timeout" in message or "no answer" in message)


# ---------------------------------------------------------------------------------------------
# the command: SIGTERM under load


@needs_serve
@pytest.mark.skipif(not engine_available("onnxruntime"), reason="onnxruntime missing")
def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(tmp_path: Path) -> None:
    import tritonclient.http as http_client

    from headway.runtime.deploy import ExportPart, export_parts

    export_parts(
        [ExportPart("tiny", tiny_model(7), (torch.randn(1, *SHAPE),))],
        tmp_path / "export",
        formats=("onnx",),
        probes=1,
    )
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.yaml").write_text(
        f"source: {tmp_path / 'export'}\nbackend: onnxruntime\nmax_batch_size: 0\n"
    )
    from headway.experiments.serve_bench import _free_port, _http_ready

    port = _free_port()
    command = [str(Path(sys.executable).with_name("headway")), "serve", str(tmp_path / "repo")]
    command += ["--http-port", str(port), "--grpc-port", "-1", "--metrics-port", "-1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not _http_ready(port, "m")():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        outcomes: list[str] = []

        def client() -> None:
            connection = http_client.InferenceServerClient(f"127.0.0.1:{port}")
            tensor = http_client.InferInput("input", [1, *SHAPE], "FP32")
            tensor.set_data_from_numpy(rows(1, 0))
            for _ in range(40):  # bounded: ends at the server's stop at the latest
                try:
                    connection.infer("m", [tensor])
                    outcomes.append("answer")
                except Exception as error:  # refused or closed after the stop: an error
                    outcomes.append(f"error: {error}")
                    return

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        for thread in clients:
            thread.join(60)
        assert not any(thread.is_alive() for thread in clients)
        assert process.wait(60) == 0
        assert outcomes.count("answer") > 0
        output = process.stdout.read().decode() if process.stdout else ""
        assert "stopped" in output and "did not finish" not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------------
# beyond one machine: Ray Serve


def _ray_serve_ready() -> bool:
    from headway.serving.ray_serve import ray_serve_missing

    return serve_missing() is None and ray_serve_missing() is None


@pytest.mark.slow
@pytest.mark.skipif(not _ray_serve_ready(), reason="Ray Serve missing")
@pytest.mark.skipif(not engine_available("onnxruntime"), reason="onnxruntime missing")
def test_two_ray_serve_replicas_give_the_in_process_answers(tmp_path: Path) -> None:
    import tritonclient.http as http_client
    from ray import serve

    from headway.experiments.serve_bench import _free_port
    from headway.runtime.deploy import ExportPart, export_parts
    from headway.serving.ray_serve import APP_NAME, start_on_ray, stop_on_ray

    model = tiny_model(9)
    export_parts(
        [ExportPart("tiny", model, (torch.randn(1, *SHAPE),))],
        tmp_path / "export",
        formats=("onnx",),
        probes=1,
    )
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.yaml").write_text(
        f"source: {tmp_path / 'export'}\nbackend: onnxruntime\nmax_batch_size: 0\n"
    )
    port = _free_port()
    try:
        start_on_ray(str(tmp_path / "repo"), 2, http_port=port, cpus=0.5)
        states = serve.status().applications[APP_NAME].deployments["headway"].replica_states
        assert states.get("RUNNING") == 2
        client = http_client.InferenceServerClient(f"127.0.0.1:{port}")
        for seed in range(6):  # bounded; the proxy spreads them over both replicas
            x = rows(1, 30 + seed)
            tensor = http_client.InferInput("input", [1, *SHAPE], "FP32")
            tensor.set_data_from_numpy(x)
            answer = client.infer("m", [tensor]).as_numpy("output")
            assert np.abs(answer - eager(model, x)).max() <= 1e-5
    finally:
        stop_on_ray()
