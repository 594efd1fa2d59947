"""Prometheus metrics (one registry per app) and the ASGI middleware that times requests.

With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR (``python -m service serve
--workers N`` does it) and /metrics aggregates every worker.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
COMPUTE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "towerrec_http_requests_total",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "towerrec_http_request_duration_seconds",
            "HTTP latency by route template and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter("towerrec_cache_hits_total", "User-vector cache hits", registry=r)
        self.cache_misses = Counter(
            "towerrec_cache_misses_total", "User-vector cache misses", registry=r
        )
        self.cache_errors = Counter(
            "towerrec_cache_errors_total",
            "Redis calls that failed as a whole (timeouts, connection errors)",
            registry=r,
        )
        self.redis_key_errors = Counter(
            "towerrec_redis_key_errors_total",
            "Redis commands refused for one key (e.g. WRONGTYPE): that user's part fails only",
            ["op"],
            registry=r,
        )
        self.redis_pipelines = Counter(
            "towerrec_redis_pipelines_total",
            "Pipelines sent to Redis (one per node per event-loop iteration: the commands "
            "of concurrent requests are sent together)",
            registry=r,
        )
        self.redis_up = Gauge(
            "towerrec_redis_up",
            "1 while Redis is in use, 0 while the circuit breaker skips it",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.events = Counter(
            "towerrec_events_total",
            "Events posted to /events by result (recorded, duplicate, failed)",
            ["result"],
            registry=r,
        )
        self.model_info = Gauge(
            "towerrec_model_info",
            "The model version being served (value 1)",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_loaded = Gauge(
            "towerrec_model_loaded_timestamp_seconds",
            "When the served bundle was loaded",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "towerrec_reloads_total", "Bundle reloads by result", ["result"], registry=r
        )
        self.index_swaps = Counter(
            "towerrec_index_swaps_total",
            "New index versions swapped in without a full reload, by result",
            ["result"],
            registry=r,
        )
        self.item_writes = Counter(
            "towerrec_item_writes_total",
            "Items changed through the item API, by operation",
            ["op"],
            registry=r,
        )
        self.inference = Histogram(
            "towerrec_inference_seconds",
            "User-tower forward pass per batch",
            buckets=COMPUTE_BUCKETS,
            registry=r,
        )
        self.search = Histogram(
            "towerrec_search_seconds", "Index search per batch", buckets=COMPUTE_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "towerrec_batch_size",
            "Requests per micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.strategy = Counter(
            "towerrec_recommendations_total",
            "Answered /recommend requests by strategy",
            ["strategy"],
            registry=r,
        )
        # live ANN recall (service.dashboard.RecallChecker): sampled searches re-run exactly
        self.ann_recall_checks = Counter(
            "towerrec_ann_recall_checks_total",
            "Sampled /recommend index searches re-run exactly (ANN_RECALL_SAMPLE)",
            registry=r,
        )
        self.ann_recall_found = Counter(
            "towerrec_ann_recall_found_total",
            "Items of the exact top-k that the index also returned, over the checks",
            registry=r,
        )
        self.ann_recall_relevant = Counter(
            "towerrec_ann_recall_relevant_total",
            "Items of the exact top-k (k per check), over the checks",
            registry=r,
        )
        self.ann_recall_dropped = Counter(
            "towerrec_ann_recall_dropped_total",
            "Sampled searches not checked because the check queue was full",
            registry=r,
        )
        self.ann_recall = Gauge(
            "towerrec_ann_recall",
            "Recall@k of the served index: found / relevant over the dashboard's series "
            "window (UI_HISTORY_S); absent until a search was checked",
            ["index"],
            registry=r,
            multiprocess_mode="livemax",
        )

        # labelled children, looked up once per label set (labels() costs microseconds)
        self._http: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._strategies: dict[str, Counter] = {}

    def observe_request(self, method: str, route: str, status: str, seconds: float) -> None:
        key = (method, route, status)
        pair = self._http.get(key)
        if pair is None:
            pair = self._http[key] = (self.requests.labels(*key), self.latency.labels(*key))
        pair[0].inc()
        pair[1].observe(seconds)

    def count_strategy(self, strategy: str) -> None:
        counter = self._strategies.get(strategy)
        if counter is None:
            counter = self._strategies[strategy] = self.strategy.labels(strategy=strategy)
        counter.inc()

    def count_cache(self, status: str) -> None:
        if status == "hit":
            self.cache_hits.inc()
        elif status == "miss":
            self.cache_misses.inc()

    def set_model(self, version: str) -> None:
        for (previous,) in list(self.model_info._metrics):  # noqa: SLF001
            # multiprocess mode keeps values in files that clear() does not touch
            self.model_info.labels(version=previous).set(0)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # not implemented there (warns)
            self.model_info.clear()
        self.model_info.labels(version=version).set(1)
        self.model_loaded.set(time.time())

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI: counts and times every HTTP request by route template (not raw path)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            self.metrics.observe_request(
                scope["method"], template, str(status[0]), time.perf_counter() - start
            )
