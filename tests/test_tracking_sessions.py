"""Tracking sessions on ``headway serve``: tritonclient's sequence parameters open, feed and
end a tracker session; interleaved sessions get the boxes they would get alone; an expired
session and the session cap give their errors (HTTP and gRPC)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

import headway
from headway.serving.config import ModelConfig, SequenceBatching, parse_config
from headway.serving.runtime import BadRequest, ServingRuntime
from headway.serving.server import Server, serve_missing, serving_in_thread
from headway.serving.sessions import SequenceControl
from headway.tracking.datasets import load_dataset

needs_serve = pytest.mark.skipif(serve_missing() is not None, reason="serve extra missing")


def tracker_config(name: str, **fields: object) -> ModelConfig:
    fields = {"source": "cswintt:tiny", "checkpoint": "builtin", "executor": "eager", **fields}
    return ModelConfig(name, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def videos(synth_dataset: Path) -> list[tuple[list[np.ndarray], list[float]]]:
    """Each synthetic sequence as BGR frames (as OpenCV reads them) and its first box."""
    return [
        ([cv2.imread(str(p)) for p in s.frames], [float(v) for v in s.init_box])
        for s in load_dataset(synth_dataset, "otb")
    ]


@pytest.fixture(scope="module")
def alone(videos: list[tuple[list[np.ndarray], list[float]]]) -> list[np.ndarray]:
    """The boxes each sequence gets tracked on its own (headway.Tracker, eager)."""
    expected = []
    for frames, box in videos:
        with headway.Tracker(config="tiny", executor="eager") as tracker:
            tracker.init(frames[0], box)
            expected.append(np.asarray([box] + [tracker.update(f).box for f in frames[1:]]))
    return expected


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[object, ServingRuntime]]:
    if serve_missing() is not None:
        pytest.skip("serve extra missing")
    configs = [
        tracker_config("track", sequence_batching=SequenceBatching(max_sequences=2)),
        tracker_config("short", sequence_batching=SequenceBatching(max_idle_us=200_000)),
    ]
    runtime = ServingRuntime(configs, strict=True)
    with serving_in_thread(Server(runtime, "127.0.0.1", 0, 0, 0)) as ports:
        yield ports, runtime


def _request(lib: object, frame: np.ndarray, box: list[float] | None) -> list[object]:
    tensor = lib.InferInput("FRAME", list(frame.shape), "UINT8")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(frame)
    inputs = [tensor]
    if box is not None:
        box_tensor = lib.InferInput("BOX", [4], "FP32")  # type: ignore[attr-defined]
        box_tensor.set_data_from_numpy(np.asarray(box, np.float32))
        inputs.append(box_tensor)
    return inputs


@needs_serve
def test_interleaved_sessions_get_their_own_boxes_over_http_and_grpc(
    server: tuple[object, ServingRuntime],
    videos: list[tuple[list[np.ndarray], list[float]]],
    alone: list[np.ndarray],
) -> None:
    import tritonclient.grpc as grpc_client
    import tritonclient.http as http_client

    ports, runtime = server
    for lib, port, base in ((http_client, ports.http, 100), (grpc_client, ports.grpc, 200)):  # type: ignore[attr-defined]
        client = lib.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_model_ready("track")
        got: list[list[list[float]]] = [[], []]
        length = min(len(frames) for frames, _ in videos)
        for index in range(length):  # frame k of session A, then frame k of session B
            for which, (frames, box) in enumerate(videos):
                answer = client.infer(
                    "track",
                    _request(lib, frames[index], box if index == 0 else None),
                    sequence_id=base + which,
                    sequence_start=index == 0,
                    sequence_end=index == length - 1,
                )
                got[which].append(answer.as_numpy("BOX").tolist())
                score = float(answer.as_numpy("SCORE")[0])
                assert 0.0 <= score <= 1.0
        for which in range(2):
            np.testing.assert_allclose(got[which], alone[which][:length], atol=1e-3)
        assert runtime.trackers["track"].open_sessions() == 0  # sequence_end closed both


@needs_serve
def test_session_cap_and_expiry_are_named(
    server: tuple[object, ServingRuntime], videos: list[tuple[list[np.ndarray], list[float]]]
) -> None:
    import tritonclient.grpc as grpc_client
    import tritonclient.http as http_client
    from tritonclient.utils import InferenceServerException

    ports, _ = server
    frames, box = videos[0]
    http = http_client.InferenceServerClient(f"127.0.0.1:{ports.http}")  # type: ignore[attr-defined]
    grpc = grpc_client.InferenceServerClient(f"127.0.0.1:{ports.grpc}")  # type: ignore[attr-defined]
    for sequence in (1, 2):  # the cap is 2
        http.infer("track", _request(http_client, frames[0], box), sequence_id=sequence,
                   sequence_start=True)  # fmt: skip
    with pytest.raises(InferenceServerException, match="2 sessions are open") as refused:
        http.infer("track", _request(http_client, frames[0], box), sequence_id=3,
                   sequence_start=True)  # fmt: skip
    assert refused.value.status() == "429"
    with pytest.raises(InferenceServerException, match="2 sessions are open") as refused:
        grpc.infer("track", _request(grpc_client, frames[0], box), sequence_id=3,
                   sequence_start=True)  # fmt: skip
    assert "RESOURCE_EXHAUSTED" in str(refused.value.status())
    for sequence in (1, 2):  # ending one frees its place
        http.infer("track", _request(http_client, frames[1], None), sequence_id=sequence,
                   sequence_end=True)  # fmt: skip
    http.infer("track", _request(http_client, frames[0], box), sequence_id=3,
               sequence_start=True, sequence_end=True)  # fmt: skip

    http.infer("short", _request(http_client, frames[0], box), sequence_id=9, sequence_start=True)
    time.sleep(0.5)  # past its 0.2 s idle limit
    with pytest.raises(InferenceServerException, match=r"sequence 9 expired after 0\.2 s idle"):
        http.infer("short", _request(http_client, frames[1], None), sequence_id=9)
    with pytest.raises(InferenceServerException, match="has no session"):
        grpc.infer("track", _request(grpc_client, frames[1], None), sequence_id=77)
    with pytest.raises(InferenceServerException, match="non-zero sequence_id"):
        http.infer("track", _request(http_client, frames[1], None))
    with pytest.raises(InferenceServerException, match="needs BOX"):
        http.infer("track", _request(http_client, frames[0], None), sequence_id=5,
                   sequence_start=True)  # fmt: skip
    assert client_ok(http)


def client_ok(client: object) -> bool:
    return bool(client.is_server_live())  # type: ignore[attr-defined]


def test_in_process_sessions_and_repository_fields(
    videos: list[tuple[list[np.ndarray], list[float]]], alone: list[np.ndarray], tmp_path: Path
) -> None:
    frames, box = videos[0]
    with ServingRuntime([tracker_config("t")]) as runtime:
        first = runtime.infer("t", {"FRAME": frames[0], "BOX": np.asarray(box, np.float32)},
                              sequence=SequenceControl("a", start=True))  # fmt: skip
        assert first["BOX"].tolist() == pytest.approx(box)
        second = runtime.infer("t", {"FRAME": frames[1]}, sequence=SequenceControl("a"))
        np.testing.assert_allclose(second["BOX"], alone[0][1], atol=1e-3)
        with pytest.raises(BadRequest, match="FRAME must be UINT8"):
            runtime.submit("t", {"FRAME": frames[1].astype(np.float32)}, None,
                           SequenceControl("a"))  # fmt: skip
        assert runtime.metadata("t")["platform"] == "headway_tracker"
        assert runtime.model_config("t")["sequence_batching"]["oldest"] == {
            "max_candidate_sequences": 16
        }
    parsed = parse_config(
        {"source": "cswintt:tiny", "executor": "eager",
         "sequence_batching": {"max_sequence_idle_microseconds": 5_000_000,
                               "oldest": {"max_candidate_sequences": 4}}},
        tmp_path,
    )  # fmt: skip
    assert parsed.tracker and parsed.sequence_batching == SequenceBatching(5_000_000, 4)
    with pytest.raises(Exception, match="the tracker's size is one of"):
        parse_config({"source": "cswintt:huge"}, tmp_path)
    with pytest.raises(Exception, match="max_candidate_sequences must be"):
        parse_config({"source": "cswintt", "sequence_batching": {"max_candidate_sequences": 0}},
                     tmp_path)  # fmt: skip
