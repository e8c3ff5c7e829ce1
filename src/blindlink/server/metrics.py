"""The server's Prometheus metrics, served over HTTP on a port of their own.

Call metrics are recorded by the metrics interceptor; run metrics are read from the store and
the run queue when scraped. No metric holds a project ID, party or request content.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from blindlink.matching.blocking import KeyLoad
from blindlink.server.config import ServerTls, host_and_port
from blindlink.server.runs import RunQueue
from blindlink.store.sqlite import RUN_STATES, Store

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
COMPARISON_BUCKETS = tuple(10.0**e for e in range(2, 13))


class ServerMetrics:
    """One server's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("service", "method")
        self.requests = Counter(
            "blindlink_requests",
            "Calls handled, by method and gRPC status code",
            (*labels, "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "blindlink_request_duration_seconds",
            "Time from a call's start to its status, by method",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "blindlink_requests_in_flight",
            "Calls being handled, by method",
            labels,
            registry=self.registry,
        )
        self.request_bytes = Counter(
            "blindlink_request_bytes",
            "Bytes of request messages received, by method (Upload: the uploaded encodings)",
            labels,
            registry=self.registry,
        )
        self.key_group_comparisons = Histogram(
            "blindlink_key_group_largest_comparisons",
            "Per run with blocking keys, the comparisons of each key's largest group (records "
            "sharing one key value), by the key's fields",
            ("key",),
            buckets=COMPARISON_BUCKETS,
            registry=self.registry,
        )

    def observe_key_loads(self, loads: list[KeyLoad]) -> None:
        """Record one run's blocking key groups."""
        for load in loads:
            largest = load.largest[0].comparisons if load.largest else 0
            self.key_group_comparisons.labels(load.key).observe(largest)

    def watch_runs(self, store: Store, runs: RunQueue) -> None:
        """Report run metrics from `store` and `runs` at every scrape."""
        self.registry.register(_RunCollector(store, runs))


class _RunCollector(Collector):
    def __init__(self, store: Store, runs: RunQueue) -> None:
        self._store = store
        self._runs = runs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state = GaugeMetricFamily(
            "blindlink_runs", "Runs in the store, by state", labels=("state",)
        )
        counts = self._store.run_state_counts()
        for state in RUN_STATES:
            by_state.add_metric((state,), counts.get(state, 0))
        yield by_state
        yield GaugeMetricFamily(
            "blindlink_runs_queued",
            "Runs waiting for the matching worker in this process (queue depth)",
            value=self._runs.queued(),
        )
        current = self._runs.current()
        for unit in ("comparisons", "bands"):
            rate = current.rate if current is not None and current.unit == unit else 0.0
            yield GaugeMetricFamily(
                f"blindlink_run_{unit}_per_second",
                f"{unit.capitalize()} per second of the run being matched (0: none)",
                value=rate,
            )


class MetricsEndpoint:
    """An HTTP server answering GET /metrics from `metrics` on `address` (HOST:PORT); with
    `tls`, HTTPS with the server's certificate, answering only clients whose certificate the
    client CA signed."""

    def __init__(self, metrics: ServerMetrics, address: str, tls: ServerTls | None = None) -> None:
        host, port = host_and_port(address, "metrics_listen")
        self._httpd: WSGIServer
        self._thread: threading.Thread
        self._httpd, self._thread = start_http_server(
            port,
            host,
            metrics.registry,
            certfile=str(tls.cert) if tls else None,
            keyfile=str(tls.key) if tls else None,
            client_cafile=str(tls.client_ca) if tls else None,
            client_auth_required=tls is not None,
        )
        self.port = self._httpd.server_port

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
