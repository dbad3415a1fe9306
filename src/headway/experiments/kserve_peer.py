"""The peer of ``headway bench serve``: KServe's Python model server serving ONNX graphs on
plain OpenVINO, as a user would without a Triton or OVMS binary at hand (``ov.convert_model``,
the THROUGHPUT hint, one compiled model per name, requests through an ``AsyncInferQueue``).

It runs in its own environment (kserve pins packages headway's does not admit), so it imports
neither torch nor headway::

    PEER_PYTHON kserve_peer.py --model NAME=GRAPH.onnx [...] --http_port P --grpc_port Q
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH.onnx")
    own, _ = parser.parse_known_args()  # the rest are kserve's own (--http_port …)
    import kserve
    import numpy as np
    import openvino as ov
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

    core = ov.Core()

    class OpenVINOModel(Model):
        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.path = path
            self.queue: Any = None
            self.slots: Any = None

        def load(self) -> bool:
            compiled = core.compile_model(
                ov.convert_model(self.path), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"}
            )
            self.queue = ov.AsyncInferQueue(compiled)
            self.queue.set_callback(self._done)
            self.ready = True
            return self.ready

        @staticmethod
        def _done(request: Any, userdata: Any) -> None:
            loop, future = userdata
            output = np.array(request.get_output_tensor(0).data, copy=True)
            loop.call_soon_threadsafe(future.set_result, output)

        async def predict(
            self, payload: InferRequest, headers: Any = None, response_headers: Any = None
        ) -> InferResponse:
            loop = asyncio.get_running_loop()
            if self.slots is None:  # one slot per infer request of the queue
                self.slots = asyncio.Semaphore(len(self.queue))
            future = loop.create_future()
            array = payload.inputs[0].as_numpy()
            async with self.slots:  # start_async is then never kept waiting for a request
                self.queue.start_async({0: array}, (loop, future))
                output = await future
            result = InferOutput("output", list(output.shape), "FP32")
            result.set_data_from_numpy(output, binary_data=True)
            return InferResponse(payload.id, self.name, [result], use_binary_outputs=True)

    models = []
    for item in own.model:
        name, _, path = item.partition("=")
        model = OpenVINOModel(name, path)
        model.load()
        models.append(model)
    kserve.logging.logger.setLevel("WARNING")
    ModelServer().start(models)


if __name__ == "__main__":
    main()
