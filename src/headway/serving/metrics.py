"""Prometheus metrics of a serving runtime (``prometheus_client``, the ``serve`` extra). Each
runtime has its own registry, so two runtimes in one process (tests, the benchmark) do not mix;
without the package every method is a no-op and the server says how to install it."""

from __future__ import annotations

from typing import Any

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512, 1024)
TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def metrics_available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class Metrics:
    """Per model: requests, successes and failures (by reason), queue and compute seconds,
    batch sizes and the queue depth."""

    def __init__(self) -> None:
        self.registry: Any = None
        if not metrics_available():
            return
        import prometheus_client as prom

        self.registry = prom.CollectorRegistry()
        labels = ["model"]
        self.requests = prom.Counter(
            "headway_inference_requests",
            "Inference requests received",
            labels,
            registry=self.registry,
        )
        self.successes = prom.Counter(
            "headway_inference_success",
            "Inference requests answered",
            labels,
            registry=self.registry,
        )
        self.failures = prom.Counter(
            "headway_inference_failure",
            "Inference requests failed",
            ["model", "reason"],
            registry=self.registry,
        )
        self.queue_seconds = prom.Histogram(
            "headway_queue_seconds",
            "Time from arrival to the start of its batch",
            labels,
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = prom.Histogram(
            "headway_compute_seconds",
            "Time a batch spent in the model's jobs",
            labels,
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = prom.Histogram(
            "headway_batch_size",
            "Rows per executed batch",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = prom.Gauge(
            "headway_queue_depth", "Requests waiting for a batch", labels, registry=self.registry
        )

    def received(self, model: str) -> None:
        if self.registry is not None:
            self.requests.labels(model).inc()

    def answered(self, model: str, queued_s: float) -> None:
        if self.registry is not None:
            self.successes.labels(model).inc()
            self.queue_seconds.labels(model).observe(queued_s)

    def failed(self, model: str, reason: str) -> None:
        if self.registry is not None:
            self.failures.labels(model, reason).inc()

    def batch(self, model: str, rows: int, compute_s: float) -> None:
        if self.registry is not None:
            self.batch_size.labels(model).observe(rows)
            self.compute_seconds.labels(model).observe(compute_s)

    def depth(self, model: str, waiting: int) -> None:
        if self.registry is not None:
            self.queue_depth.labels(model).set(waiting)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        if self.registry is None:
            return b"# prometheus_client is not installed: pip install 'headway[serve]'\n"
        import prometheus_client as prom

        return prom.generate_latest(self.registry)
