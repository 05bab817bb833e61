"""Prometheus metrics of the model server, correct with one or many worker processes.

With several workers (forked by tornado) each process counts on its own; a scrape
reaches one of them at random, so per-process registries would give jumping numbers.
We therefore use prometheus_client's multiprocess mode whenever ``multiproc_dir`` is
given: every worker writes its samples to mmap'd files in that directory and ``/metrics``
(answered by any worker) aggregates all of them. The directory is private to one server
run and emptied at start. With one worker the plain in-memory registry is used.
"""

from __future__ import annotations

import os

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import values as _values

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    """The server's metrics: requests by model/code, latency and batch-size histograms."""

    def __init__(self, multiproc_dir: str | None = None):
        self.multiproc_dir = multiproc_dir
        if multiproc_dir:
            # metric objects pick their value class when created: switch it explicitly so
            # this works even if prometheus_client was imported before the env var was set
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
            _values.ValueClass = _values.get_value_class()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pai_serving_requests",
            "Inference requests answered, by model and HTTP status code.",
            ["model", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pai_serving_request_duration_seconds",
            "Time from receiving an inference request to sending its answer.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "pai_serving_batch_size",
            "Rows per model predict call (adaptive batching merges requests).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text for a scrape, aggregated over workers when multiprocess."""
        if self.multiproc_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)
            return prometheus_client.generate_latest(
                registry
            ), prometheus_client.CONTENT_TYPE_LATEST
        return prometheus_client.generate_latest(
            self.registry
        ), prometheus_client.CONTENT_TYPE_LATEST
