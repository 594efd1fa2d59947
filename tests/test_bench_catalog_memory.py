"""The serving catalog's Python memory per item stays small (bench/catalog_memory.py):
a million-item catalog is held by every worker, so per-item dicts or copies show at once."""

from __future__ import annotations

from bench.catalog_memory import measure


def test_a_worker_keeps_a_few_hundred_bytes_per_item():
    got = measure(20_000)
    # items.json's per-item dicts plus the engine's copies took 1,431 B (docs/BENCHMARKS.md)
    assert got["catalog_b"] + got["fragments_b"] < 600, got
    assert got["fragments_b"] < 250, got
