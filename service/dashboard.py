"""The dashboard's server side (/ui, service.routes.ui): a time series of this replica's
metrics, the items recently served, and a live check of the index's recall.

- ``Sampler``: every UI_SAMPLE_S one worker reads the Prometheus registry aggregated over
  all the replica's workers (the same numbers /metrics shows) and appends a snapshot of the
  counters to a series of the last UI_HISTORY_S seconds. With several workers
  (PROMETHEUS_MULTIPROC_DIR) the worker holding an flock on ``ui-sampler.lock`` in that
  directory samples and writes the series to ``ui-series.json`` there; every worker answers
  from that file, so the series is the same whichever worker answers, and when the sampling
  worker exits another one takes the lock over and continues the file.
- ``Exposure``: the item ids of the last EXPOSURE_ANSWERS answers of this worker (/recommend
  and /recommend/batch), written to ``ui-served-<pid>.json`` with several workers, merged
  over the live workers on read; coverage, Gini and popularity lift of those items.
- ``RecallChecker``: a share ANN_RECALL_SAMPLE of the unfiltered /recommend index searches
  is queued (bounded, dropped when full) and re-run exactly (a scan of every active vector)
  on a background thread, off the request path; the overlap of the served items with the
  exact top-k is counted in Prometheus counters, and the sampler turns them into the gauge
  ``towerrec_ann_recall``: recall@k over the series window.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.metrics import LATENCY_BUCKETS, Metrics

log = logging.getLogger("service.dashboard")

# Routes that are not API traffic: the dashboard's own polling, scrapes, probes, docs.
NOT_API = ("/ui", "/metrics", "/healthz", "/readyz", "/docs", "/openapi.json")


def is_api(route: str) -> bool:
    return not any(route == p or route.startswith(p + "/") for p in NOT_API)


def multiproc_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, separators=(",", ":")))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- the registry as one snapshot ---------------------------------------------------------


def collect(metrics: Metrics) -> dict[str, Any]:
    """Counters of the whole replica now: what the /metrics page of any worker adds up."""
    if multiproc_dir() is not None:
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        families = registry.collect()
    else:
        families = metrics.registry.collect()
    snap: dict[str, Any] = {
        "t": time.time(),
        "requests": 0.0,
        "e4xx": 0.0,
        "e5xx": 0.0,
        "buckets": [0.0] * (len(LATENCY_BUCKETS) + 1),
        "hits": 0.0,
        "misses": 0.0,
        "strategies": {},
        "checks": 0.0,
        "found": 0.0,
        "relevant": 0.0,
    }
    bounds = {float(b): n for n, b in enumerate(LATENCY_BUCKETS)}
    simple = {
        "towerrec_cache_hits_total": "hits",
        "towerrec_cache_misses_total": "misses",
        "towerrec_ann_recall_checks_total": "checks",
        "towerrec_ann_recall_found_total": "found",
        "towerrec_ann_recall_relevant_total": "relevant",
    }
    for family in families:
        for s in family.samples:
            if s.name == "towerrec_http_requests_total" and is_api(s.labels["route"]):
                snap["requests"] += s.value
                status = s.labels["status"]
                if status.startswith("4"):
                    snap["e4xx"] += s.value
                elif status.startswith("5"):
                    snap["e5xx"] += s.value
            elif s.name == "towerrec_http_request_duration_seconds_bucket":
                if is_api(s.labels["route"]):
                    le = float(s.labels["le"])
                    snap["buckets"][bounds.get(le, len(LATENCY_BUCKETS))] += s.value
            elif s.name == "towerrec_recommendations_total":
                name = s.labels["strategy"]
                snap["strategies"][name] = snap["strategies"].get(name, 0.0) + s.value
            elif s.name in simple:
                snap[simple[s.name]] += s.value
    return snap


def quantile(q: float, buckets: list[float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative bucket counts (LATENCY_BUCKETS, +Inf):
    linear inside the bucket holding the rank; the highest finite bound for the +Inf one."""
    total = buckets[-1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in zip(LATENCY_BUCKETS, buckets, strict=False):
        if count >= rank:
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, count
    return LATENCY_BUCKETS[-1]


def rates(a: dict, b: dict) -> dict[str, Any]:
    """What happened between two snapshots (deltas clamped at 0: a counter never drops)."""
    dt = max(b["t"] - a["t"], 1e-9)

    def d(key: str) -> float:
        return max(b[key] - a[key], 0.0)

    buckets = [max(y - x, 0.0) for x, y in zip(a["buckets"], b["buckets"], strict=True)]
    hits, misses = d("hits"), d("misses")
    strategies = {s: max(v - a["strategies"].get(s, 0.0), 0.0) for s, v in b["strategies"].items()}
    answered = sum(strategies.values())
    p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
    relevant = d("relevant")
    return {
        "t": b["t"],
        "seconds": dt,
        "requests": d("requests"),
        "rps": d("requests") / dt,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
        "cache_hit_rate": hits / (hits + misses) if hits + misses else None,
        "errors_4xx_per_s": d("e4xx") / dt,
        "errors_5xx_per_s": d("e5xx") / dt,
        "strategy_share": {s: v / answered for s, v in strategies.items() if v} if answered else {},
        "recall_checks": d("checks"),
        "recall": d("found") / relevant if relevant else None,
    }


class Sampler:
    """The replica's counters every ``interval`` seconds, kept for ``history_s``."""

    def __init__(self, metrics: Metrics, interval: float, history_s: float, index_kind):
        self.metrics, self.interval, self.history_s = metrics, interval, history_s
        self.index_kind = index_kind  # () -> the served index's kind, or None
        self.directory = multiproc_dir()
        self.snaps: deque[dict] = deque()
        self._lock_file = None
        self._lead = self.directory is None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hooks: list = []  # called every tick by every worker (Exposure.flush)

    @property
    def series_path(self) -> Path | None:
        return self.directory / "ui-series.json" if self.directory else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="towerrec-ui-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock: another worker takes over

    def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the dashboard never takes a worker down
                log.exception("dashboard sampler tick failed")
            if self._stop.wait(self.interval):
                return

    def _try_lead(self) -> bool:
        if self._lead:
            return True
        handle = open(self.directory / "ui-sampler.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_file, self._lead = handle, True
        previous = read_json(self.series_path) or []  # continue the series of the last leader
        self.snaps = deque(previous)
        log.info("dashboard sampler: this worker (pid %d) samples the replica", os.getpid())
        return True

    def tick(self) -> None:
        for hook in self._hooks:
            hook()
        if not self._try_lead():
            return
        snap = collect(self.metrics)
        self.snaps.append(snap)
        while self.snaps and snap["t"] - self.snaps[0]["t"] > self.history_s:
            self.snaps.popleft()
        if self.series_path is not None:
            write_json_atomic(self.series_path, list(self.snaps))
        self._export_recall(list(self.snaps))

    def _export_recall(self, snaps: list[dict]) -> None:
        """towerrec_ann_recall{index}: recall@k of the checks over the series window; left
        at its last value while no search was checked in the window."""
        kind = self.index_kind()
        if len(snaps) < 2 or kind is None:
            return
        relevant = snaps[-1]["relevant"] - snaps[0]["relevant"]
        if relevant > 0:
            found = snaps[-1]["found"] - snaps[0]["found"]
            self.metrics.ann_recall.labels(index=kind).set(found / relevant)

    def snapshots(self) -> list[dict]:
        if self.directory is None or self._lead:
            return list(self.snaps)
        return read_json(self.series_path) or []

    def live(self, window_s: float) -> dict[str, Any]:
        """The series (one point per sampling interval) and a summary of the last
        ``window_s`` seconds."""
        snaps = self.snapshots()
        points = [rates(a, b) for a, b in zip(snaps, snaps[1:], strict=False)]
        summary = None
        if len(snaps) >= 2:
            last = snaps[-1]
            first = next((s for s in snaps if last["t"] - s["t"] <= window_s), snaps[-2])
            if first is last:
                first = snaps[-2]
            summary = rates(first, last)
        return {
            "interval_s": self.interval,
            "history_s": self.history_s,
            "window_s": window_s,
            "workers": "all workers of this replica"
            if self.directory
            else "this single-process replica",
            "points": points,
            "summary": summary,
            "sampled_at": snaps[-1]["t"] if snaps else None,
        }


# --- exposure -----------------------------------------------------------------------------


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of exposure counts over the catalog (zeros included): 0 when every
    item is served equally often, 1 - 1/n when one item gets every impression."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(((2 * ranks - n - 1) * x).sum() / (n * total))


def exposure_stats(
    answers: list[list[str]], catalog: list[str], popularity: np.ndarray
) -> dict[str, Any]:
    """Coverage, Gini and popularity lift of the items in ``answers`` over ``catalog``
    (the active item ids; ``popularity[i]`` = interactions of ``catalog[i]``).

    - coverage: distinct catalog items served / catalog size;
    - gini: of the impression counts over the whole catalog (unserved items count 0);
    - popularity lift: mean popularity of the served impressions / mean popularity of
      the catalog (1 = served as a uniform draw would be; > 1 = skewed to popular items).
    """
    position = {item: n for n, item in enumerate(catalog)}
    counts = np.zeros(len(catalog), dtype=np.int64)
    for items in answers:
        for item in items:
            n = position.get(item)
            if n is not None:
                counts[n] += 1
    impressions = int(counts.sum())
    mean_catalog = float(popularity.mean()) if len(catalog) else 0.0
    served_mean = float((counts * popularity).sum() / impressions) if impressions else None
    top = np.argsort(-counts, kind="stable")[:10]
    return {
        "answers": len(answers),
        "impressions": impressions,
        "catalog": len(catalog),
        "distinct": int((counts > 0).sum()),
        "coverage": float((counts > 0).sum() / len(catalog)) if len(catalog) else 0.0,
        "gini": gini(counts),
        "popularity_lift": served_mean / mean_catalog
        if served_mean is not None and mean_catalog
        else None,
        "served_mean_popularity": served_mean,
        "catalog_mean_popularity": mean_catalog,
        "top": [{"item_id": catalog[n], "impressions": int(counts[n])} for n in top if counts[n]],
    }


class Exposure:
    """The item ids of this worker's last ``size`` answers, shared with the other
    workers through ``ui-served-<pid>.json`` files."""

    def __init__(self, size: int):
        self.size = size
        self.answers: deque[tuple[float, list[str]]] = deque(maxlen=size)
        self.directory = multiproc_dir()
        self._written = 0  # answers recorded when the file was last written
        self._recorded = 0

    def record(self, items: list[str]) -> None:
        self.answers.append((time.time(), items))
        self._recorded += 1

    def _path(self, pid: int) -> Path:
        return self.directory / f"ui-served-{pid}.json"

    def flush(self) -> None:
        if self.directory is not None and self._recorded != self._written:
            recorded = self._recorded
            write_json_atomic(self._path(os.getpid()), list(self.answers))
            self._written = recorded

    def recent(self) -> list[list[str]]:
        """The last ``size`` answers of every live worker of the replica, newest last."""
        merged = list(self.answers)
        if self.directory is not None:
            for path in self.directory.glob("ui-served-*.json"):
                pid = int(path.stem.rsplit("-", 1)[1])
                if pid == os.getpid() or not _alive(pid):
                    continue
                merged += [tuple(a) for a in read_json(path) or []]
            merged.sort(key=lambda a: a[0])
        return [list(items) for _, items in merged[-self.size :]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def popularity_counts(engine) -> np.ndarray:
    """Interactions per internal item in the bundle's user histories (users.json: the
    last ``max_len`` items of every training user), cached on the engine."""
    counts = getattr(engine, "_ui_popularity", None)
    if counts is None:
        histories = [engine.user(u)[2] for u in engine.users]  # internal ids
        flat = np.fromiter((i for h in histories for i in h), dtype=np.int64)
        counts = np.bincount(flat, minlength=engine.n_items).astype(np.float64)
        engine._ui_popularity = counts
    return counts


# --- live ANN recall ----------------------------------------------------------------------


@dataclass
class Check:
    engine: Any
    vector: np.ndarray
    k: int
    exclude: set[int]
    served: list[int]
    scores: list[float]


def overlap(served: list[int], scores: list[float], truth: list[int], truth_scores: list[float]):
    """(found, relevant): how many of the exact top-k the served list has. A served item
    outside the exact list whose score ties the k-th exact score counts as found (two exact
    scans can order equal scores differently)."""
    relevant = len(truth)
    if relevant == 0:
        return 0, 0
    exact = set(truth)
    threshold = truth_scores[-1]
    tolerance = 1e-5 * (1.0 + abs(threshold))
    found = sum(
        1 for i, s in zip(served, scores, strict=True) if i in exact or s >= threshold - tolerance
    )
    return min(found, relevant), relevant


class RecallChecker:
    """Re-runs a sampled share of the served index searches exactly, on its own thread."""

    def __init__(self, metrics: Metrics, sample: float, queue_size: int = 64):
        self.metrics, self.sample = metrics, sample
        self.queue: queue.Queue[Check | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self.last: dict[str, Any] | None = None

    def start(self) -> None:
        if self.sample > 0:
            self._thread = threading.Thread(
                target=self._run, name="towerrec-ann-recall", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait(None)
            self._thread.join(timeout=5)

    def offer(self, engine, vector, k, exclude, served, scores) -> None:
        """On the request path: a random draw and, for a sampled search, a queue put."""
        if self.sample <= 0 or random.random() >= self.sample:
            return
        try:
            self.queue.put_nowait(Check(engine, vector, k, set(exclude), served, scores))
        except queue.Full:
            self.metrics.ann_recall_dropped.inc()

    def _run(self) -> None:
        while (check := self.queue.get()) is not None:
            try:
                self.run_check(check)
            except Exception:  # noqa: BLE001
                log.exception("ANN recall check failed")

    def run_check(self, c: Check) -> None:
        truth, truth_scores = c.engine.index.exact(c.vector, c.k, c.exclude)
        found, relevant = overlap(c.served, c.scores, truth, truth_scores)
        self.metrics.ann_recall_checks.inc()
        self.metrics.ann_recall_found.inc(found)
        self.metrics.ann_recall_relevant.inc(relevant)
        self.last = {"at": time.time(), "k": c.k, "found": found, "relevant": relevant}


class Dashboard:
    """What the /ui routes read, started and stopped with the app (service.runtime)."""

    def __init__(self, settings, metrics: Metrics, index_kind):
        self.settings = settings
        self.sampler = Sampler(metrics, settings.ui_sample_s, settings.ui_history_s, index_kind)
        self.exposure = Exposure(settings.exposure_answers)
        self.recall = RecallChecker(metrics, settings.ann_recall_sample)
        self.sampler._hooks.append(self.exposure.flush)

    def start(self) -> None:
        self.recall.start()
        self.sampler.start()

    def stop(self) -> None:
        self.sampler.stop()
        self.recall.stop()

    def served(self, engine, plan, ids: list[int], scores: list[float] | None) -> None:
        """One answer of /recommend (request path: cheap)."""
        self.exposure.record([engine.item_ids[i] for i in ids])
        if scores is not None and plan.allowed is None and plan.vector is not None:
            self.recall.offer(engine, plan.vector, plan.k, plan.exclude, ids, scores)
