"""Index benchmark: FAISS kinds and settings on clustered catalogs, against exact search.

    python -m bench.index [--sizes 10000,100000,1000000] [--quick] [--bundle artifacts/current]

Catalogs: d=64 vectors from a mixture of Gaussians (random directions, log-normal norms,
per-cluster spread, Zipf-distributed cluster sizes: a few huge clusters, a long tail);
queries are held-out draws from the same mixture. ``--bundle`` adds the bundle's real item
embeddings, queried with user-like Gaussian vectors (same mean and covariance).

Per kind and setting: build time (2 threads), serialized index size, single-query latency
p50/p99 and batch-of-64 throughput on 1 thread, recall@10 against exact search, and the
speed-up over exact flat search at the same size. Then the two ways of excluding seen items
(``IDSelector`` in the search parameters vs over-fetch-and-filter) through ``ItemIndex``.
Writes the ``## Index`` section of docs/BENCHMARKS.md (``--no-write`` to skip); a
``### Reading`` subsection already there is kept.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np

from index import IndexSpec, ItemIndex
from index.evaluate import (
    batch_qps,
    exact_top_k,
    faiss_search,
    recall,
    single_query_ms,
    user_like_queries,
)
from index.factory import auto_nlist, serialized_bytes

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
DIM = 64
BUILD_THREADS = 2
TARGET_RECALL, TARGET_P50_MS = 0.95, 1.0


@dataclass
class Row:
    catalog: str
    n: int
    kind: str
    setting: str
    build_s: float
    size_bytes: int
    p50_ms: float
    p99_ms: float
    qps64: float
    recall10: float
    speedup_p50: float = 1.0
    speedup_qps: float = 1.0


@dataclass
class ExclusionRow:
    catalog: str
    setting: str
    k: int
    excluded: int
    strategy: str
    p50_ms: float
    qps64: float
    recall10: float


# ----------------------------------------------------------------------------- data


def mixture(n: int, d: int = DIM, seed: int = 0) -> np.ndarray:
    """Clustered vectors: ~n/1000 clusters (at least 32), Zipf(1.1) sizes, varied norms."""
    rng = np.random.default_rng(seed)
    clusters = max(32, n // 1000)
    centers = rng.standard_normal((clusters, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    scale = rng.lognormal(0.0, 0.25, clusters)  # popular regions have longer vectors
    spread = rng.uniform(0.3, 0.7, clusters)
    weights = 1.0 / np.arange(1, clusters + 1) ** 1.1
    labels = rng.choice(clusters, n, p=weights / weights.sum())
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):  # chunked: bounded float64 temporaries
        lab = labels[start : start + 100_000]
        noise = rng.standard_normal((len(lab), d)) * (spread[lab, None] / np.sqrt(d))
        out[start : start + len(lab)] = scale[lab, None] * (centers[lab] + noise)
    return out


def synthetic(n: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A catalog of ``n`` and ``queries`` held-out draws of the same mixture."""
    x = mixture(n + queries, seed=seed)
    return x[:n], x[n:]


# ----------------------------------------------------------------------------- settings


def settings(n: int, quick: bool) -> list[tuple[IndexSpec, list[dict]]]:
    """(build spec, search-time knobs to sweep) per index that gets built."""
    efs = [16, 32, 64, 128] if quick else [16, 32, 64, 128, 256]
    nlist = auto_nlist(n)
    probes = [p for p in ([4, 16, 64] if quick else [8, 16, 32, 64, 128, 256]) if p <= nlist]
    out: list[tuple[IndexSpec, list[dict]]] = [(IndexSpec("flat"), [{}])]
    for m in [16] if quick else [16, 32]:
        spec = IndexSpec("hnsw", hnsw_m=m, ef_construction=64)
        out.append((spec, [{"ef_search": ef} for ef in efs]))
    out.append((IndexSpec("ivf", nlist=nlist), [{"nprobe": p} for p in probes]))
    if n >= 100_000 and not quick:
        pq = IndexSpec("ivf", nlist=nlist, pq_m=32)
        out.append((pq, [{"nprobe": p} for p in (16, 64)]))
    return out


# ----------------------------------------------------------------------------- measuring


def measure_kinds(
    catalog: str, base: np.ndarray, queries: np.ndarray, quick: bool, keep: set[str]
) -> tuple[list[Row], dict[str, ItemIndex]]:
    """Every setting of ``settings`` on one catalog; returns rows and the indexes in ``keep``."""
    truth = exact_top_k(base, queries, 10)
    n_single = 200 if len(base) >= 500_000 else 1000
    rows: list[Row] = []
    kept: dict[str, ItemIndex] = {}
    flat_row: Row | None = None
    for spec, knobs in settings(len(base), quick):
        faiss.omp_set_num_threads(BUILD_THREADS)
        start = time.perf_counter()
        index = ItemIndex.from_vectors(base, spec)
        build_s = time.perf_counter() - start
        size = serialized_bytes(index.faiss_index)
        faiss.omp_set_num_threads(1)
        for knob in knobs:
            index.set_search_params(**knob)
            search = faiss_search(index)
            found = search(queries, 10)[1]
            ms = single_query_ms(search, queries[: min(n_single, len(queries))], 10)
            row = Row(
                catalog,
                len(base),
                spec.kind,
                index.spec.label(),
                build_s,
                size,
                float(np.percentile(ms, 50)),
                float(np.percentile(ms, 99)),
                batch_qps(search, queries, 10),
                recall(found, truth, 10),
            )
            if spec.kind == "flat":
                flat_row = row
            elif flat_row is not None:
                row.speedup_p50 = flat_row.p50_ms / row.p50_ms
                row.speedup_qps = row.qps64 / flat_row.qps64
            rows.append(row)
            print(fmt_row(row), flush=True)
            if index.spec.label() in keep:
                kept[index.spec.label()] = index
        del index
    return rows, kept


def seen_sets(base: np.ndarray, queries: np.ndarray, size: int, seed: int) -> list[set[int]]:
    """Half of each query's exact top-``size`` neighbours plus random items (exclusions
    that actually remove results, like a user's history around their taste)."""
    rng = np.random.default_rng(seed)
    near = exact_top_k(base, queries, size)
    out = []
    for row in near:
        picked = set(rng.choice(row, size // 2, replace=False).tolist())
        while len(picked) < size:
            picked.add(int(rng.integers(len(base))))
        out.append(picked)
    return out


def measure_exclusions(
    catalog: str, base: np.ndarray, queries: np.ndarray, indexes: dict[str, ItemIndex], quick: bool
) -> list[ExclusionRow]:
    """Over-fetch vs IDSelector through ``ItemIndex.search`` (1 thread)."""
    faiss.omp_set_num_threads(1)
    rows = []
    n_single = 100 if len(base) >= 500_000 else 300
    for k, size in ((10, 20), (10, 200), (100, 20), (100, 200)):
        if quick and (k, size) == (100, 20):
            continue
        seen = seen_sets(base, queries, size, seed=k + size)
        truth = exact_top_k_excluding(base, queries, 10, seen)
        for label, index in indexes.items():
            for strategy in ("overfetch", "selector"):
                index.exclusion = strategy
                ids, _ = index.search(queries, k, seen)
                assert (ids >= 0).all(), "fewer than k results"
                assert all(not set(r.tolist()) & s for r, s in zip(ids, seen, strict=True))
                ms = []
                for q, s in zip(queries[:n_single], seen[:n_single], strict=True):
                    start = time.perf_counter()
                    index.search(q[None], k, [s])
                    ms.append((time.perf_counter() - start) * 1e3)
                qps = _batch_qps_excluding(index, queries, k, seen)
                row = ExclusionRow(
                    catalog,
                    label,
                    k,
                    size,
                    strategy,
                    float(np.percentile(ms, 50)),
                    qps,
                    recall(ids[:, :10], truth, 10),
                )
                rows.append(row)
                print(fmt_exclusion(row), flush=True)
    return rows


def exact_top_k_excluding(
    base: np.ndarray, queries: np.ndarray, k: int, seen: list[set[int]]
) -> np.ndarray:
    """Exact top-``k`` with each row's exclusions removed (via an over-sized exact search)."""
    extra = max(len(s) for s in seen)
    ids = exact_top_k(base, queries, k + extra)
    return np.array([[i for i in row if i not in s][:k] for row, s in zip(ids, seen, strict=True)])


def _batch_qps_excluding(
    index: ItemIndex,
    queries: np.ndarray,
    k: int,
    seen: list[set[int]],
    batch: int = 64,
    min_seconds: float = 0.5,
) -> float:
    done, start = 0, time.perf_counter()
    while True:
        for i in range(0, len(queries) - batch + 1, batch):
            index.search(queries[i : i + batch], k, seen[i : i + batch])
            done += batch
        if time.perf_counter() - start >= min_seconds:
            return done / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- report


def fmt_row(r: Row) -> str:
    speed = "reference" if r.kind == "flat" else f"{r.speedup_p50:.1f}× / {r.speedup_qps:.1f}×"
    return (
        f"| {r.catalog} | {r.setting} | {r.build_s:.1f} | {r.size_bytes / 1e6:.1f} | "
        f"{r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.qps64:,.0f} | {r.recall10:.3f} | {speed} |"
    )


def fmt_exclusion(r: ExclusionRow) -> str:
    return (
        f"| {r.catalog} | {r.setting} | {r.k} | {r.excluded} | {r.strategy} | "
        f"{r.p50_ms:.3f} | {r.qps64:,.0f} | {r.recall10:.3f} |"
    )


KIND_HEADER = (
    "| catalog | setting | build s | index MB | p50 ms | p99 ms | QPS (batch 64) | "
    "recall@10 | speed-up vs flat (p50 / QPS) |\n|---|---|---|---|---|---|---|---|---|"
)
EXCLUSION_HEADER = (
    "| catalog | setting | k | excluded | strategy | p50 ms (1 query) | "
    "QPS (batch 64) | recall@10 |\n|---|---|---|---|---|---|---|---|"
)


def headline(rows: list[Row]) -> list[str]:
    """Per catalog: the fastest ANN setting meeting the target, or the best miss."""
    out = []
    for catalog in dict.fromkeys(r.catalog for r in rows):
        ann = [r for r in rows if r.catalog == catalog and r.kind != "flat"]
        ok = [r for r in ann if r.recall10 >= TARGET_RECALL and r.p50_ms <= TARGET_P50_MS]
        if ok:
            best = min(ok, key=lambda r: r.p50_ms)
            out.append(
                f"- {catalog}: **met** by `{best.setting}`: recall@10 "
                f"{best.recall10:.3f}, p50 {best.p50_ms:.3f} ms, p99 {best.p99_ms:.3f} ms "
                f"({best.speedup_p50:.0f}× faster than exact)"
            )
        elif ann:
            best = max(ann, key=lambda r: (r.recall10 >= TARGET_RECALL, -r.p50_ms, r.recall10))
            out.append(
                f"- {catalog}: **not met**; closest `{best.setting}`: recall@10 "
                f"{best.recall10:.3f}, p50 {best.p50_ms:.3f} ms"
            )
    return out


def exclusion_summary(rows: list[ExclusionRow]) -> list[str]:
    """For each (catalog, setting): which strategy wins on single queries and on batches."""
    out = []
    groups = dict.fromkeys((r.catalog, r.setting) for r in rows)
    for catalog, setting in groups:
        mine = [r for r in rows if (r.catalog, r.setting) == (catalog, setting)]
        single = batch = 0
        cases = 0
        for k, size in dict.fromkeys((r.k, r.excluded) for r in mine):
            pair = {r.strategy: r for r in mine if (r.k, r.excluded) == (k, size)}
            cases += 1
            single += pair["overfetch"].p50_ms <= pair["selector"].p50_ms
            batch += pair["overfetch"].qps64 >= pair["selector"].qps64
        out.append(
            f"- {catalog}, `{setting}`: over-fetch faster in {single}/{cases} cases "
            f"for single queries, {batch}/{cases} for batches of 64"
        )
    return out


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "0",
    )
    return (
        f"{os.cpu_count()} cores (`nproc`), {cpu}, {int(mem) / 2**20:.0f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}"
    )


def section(meta: dict, rows: list[Row], exclusions: list[ExclusionRow]) -> str:
    return "\n".join([
        "## Index",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']} (wall time {meta['minutes']:.1f} min)  ",
        f"Machine: {meta['machine']}  ",
        f"FAISS: {faiss.__version__}; load average {meta['load_start']:.1f} at start, "
        f"{meta['load_end']:.1f} at end (the machine is shared; latencies are noisy)",
        "",
        "Catalogs: d=64 mixture of Gaussians (≈N/1000 clusters, Zipf(1.1) cluster sizes, "
        "log-normal norms); queries are 1,000 held-out draws of the same mixture "
        "(the bundle row: user-like Gaussian vectors with the catalog's mean and covariance). "
        "Raw inner product throughout. Build: 2 threads. Queries: 1 thread; single-query "
        "latency is one `search` call per query, throughput is batches of 64; recall@10 is "
        "against exact search on the same catalog. IVF `nlist` ≈ 4·√N.",
        "",
        "Target: at 1M items, recall@10 ≥ 0.95 at p50 ≤ 1 ms for a single query on 1 thread.",
        "",
        *headline(rows),
        "",
        KIND_HEADER,
        *[fmt_row(r) for r in rows],
        "",
        "### Excluding seen items: IDSelector vs over-fetch",
        "",
        "Through `ItemIndex.search` (1 thread). Each query excludes `excluded` ids: half drawn "
        "from its exact top-`excluded`, half random, so exclusions remove real results. "
        "`selector` = one FAISS call per query with `IDSelectorNot(IDSelectorBatch)` in the "
        "search parameters; `overfetch` = one batched call for `k + max|excluded|` results, "
        "then a vectorised filter. recall@10 is against exact search with the same exclusions.",
        "",
        *exclusion_summary(exclusions),
        "",
        EXCLUSION_HEADER,
        *[fmt_exclusion(r) for r in exclusions],
        "",
    ])  # fmt: skip


def write_section(text: str, path: Path = DOC) -> None:
    """Replace (or append) ``## Index``, keeping other sections and our ``### Reading``."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Index\n.*?(?=^## |\Z)", re.S | re.M)
    match = pattern.search(current)
    if match:
        reading = re.search(r"^### Reading\n.*", match.group(0), re.S | re.M)
        if reading:
            text = text.rstrip() + "\n\n" + reading.group(0).rstrip() + "\n"
        updated = current[: match.start()] + text.rstrip() + "\n\n" + current[match.end() :]
    else:
        updated = current.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(updated.rstrip() + "\n")


# ----------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> tuple[list[Row], list[ExclusionRow]]:
    rows: list[Row] = []
    exclusions: list[ExclusionRow] = []
    n_queries = 500 if args.quick else 1000
    print(KIND_HEADER, flush=True)
    for n in args.sizes:
        base, queries = synthetic(n, n_queries, seed=n)
        name = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
        keep = {
            "flat",
            "hnsw M=32 efC=64 efS=64" if not args.quick else "hnsw M=16 efC=64 efS=64",
            f"ivf nlist={auto_nlist(n)} nprobe=32 pq=0"
            if not args.quick
            else f"ivf nlist={auto_nlist(n)} nprobe=16 pq=0",
        }
        measure = n >= 100_000
        new_rows, kept = measure_kinds(name, base, queries, args.quick, keep if measure else set())
        rows += new_rows
        if measure:
            print(EXCLUSION_HEADER, flush=True)
            exclusions += measure_exclusions(name, base, queries[:256], kept, args.quick)
            print(KIND_HEADER, flush=True)
        del base, queries, kept
    if args.bundle:
        from training.bundle import ITEM_EMBEDDINGS, load_array, resolve

        root = resolve(args.bundle)
        base = np.asarray(load_array(root / ITEM_EMBEDDINGS), dtype=np.float32)
        queries = user_like_queries(base, n_queries, seed=0)
        rows += measure_kinds(f"bundle ({len(base)} items)", base, queries, args.quick, set())[0]
    else:
        print("note: no --bundle given: skipping the real item-embedding row", flush=True)
    return rows, exclusions


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.index", description=__doc__.split("\n")[0])
    p.add_argument(
        "--sizes",
        default=None,
        help="catalog sizes (default 10000,100000,1000000; --quick: 10000,100000)",
    )
    p.add_argument("--quick", action="store_true", help="fewer settings and queries")
    p.add_argument("--bundle", default=None, help="also benchmark this bundle's item embeddings")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    sizes = args.sizes or ("10000,100000" if args.quick else "10000,100000,1000000")
    args.sizes = [int(s) for s in sizes.split(",")]
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    rows, exclusions = run(args)
    meta = {
        "command": " ".join(["python -m bench.index", *argv]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": (time.perf_counter() - started) / 60,
        "machine": machine(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }
    print("\n".join(["", *headline(rows), *exclusion_summary(exclusions)]))
    if not args.no_write:
        write_section(section(meta, rows, exclusions))
        print(f"wrote the ## Index section of {DOC}")


if __name__ == "__main__":
    main()
