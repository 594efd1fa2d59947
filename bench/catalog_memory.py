"""Python memory a serving worker keeps per catalog item: ``python -m bench.catalog_memory``.

Writes a catalog of N items shaped like the 1M-item benchmark's (id, title, two genres,
item features) as items.json text, then measures with tracemalloc what stays allocated
after the serving structures are built from it exactly as a worker builds them: the
``index.ItemIndex`` catalog (ids, id map, titles, genres, active mask) and the engine's
pre-rendered answer fragments (``service.render.ItemFragments``). FAISS and the vectors
are file-backed (memory-mapped) in a worker and not counted. Prints a table for several
N, so that growth with the catalog shows, and writes the ``## Catalog memory`` section of
docs/BENCHMARKS.md (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
import tracemalloc
from datetime import UTC, datetime

import numpy as np

from bench._common import machine, write_section
from index import factory
from index.factory import IndexSpec
from index.item_index import ItemIndex
from index.store import Snapshot
from service.render import ItemFragments

GENRES = ["Action", "Comedy", "Drama", "Thriller", "Romance", "Sci-Fi", "Horror", "Crime"]


def items_json(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return json.dumps(
        [
            {
                "id": f"new-{i}",
                "title": f"Generated item {i} ({1990 + i % 30})",
                "genres": rng.sample(GENRES, 2),
                "features": {"genres": rng.sample(GENRES, 2), "year": 1990 + i % 30},
                "active": True,
            }
            for i in range(n)
        ]
    )


def build(text: str, index, vectors: np.ndarray, spec: IndexSpec) -> tuple[ItemIndex, int]:
    """The worker's catalog and fragments from items.json ``text`` (GC paused, as the store
    parses it); returns the catalog and the traced bytes after it (0 when not tracing)."""
    gc.disable()
    try:
        catalog = ItemIndex(Snapshot(index, vectors, json.loads(text), spec, False))
        after_index = tracemalloc.get_traced_memory()[0]
        catalog.fragments = ItemFragments([catalog.metadata(i) for i in range(len(vectors))])
    finally:
        gc.enable()
    return catalog, after_index


def measure(n: int) -> dict[str, float]:
    """Bytes per item still allocated once the catalog and the fragments are built
    (tracemalloc), and the CPU seconds building them takes (a second, untraced build)."""
    text = items_json(n)
    vectors = np.zeros((n, 4), np.float32)
    spec = IndexSpec().resolved(n, 4)
    index = factory.build(spec, vectors, np.arange(n, dtype=np.int64))
    cpu = time.process_time()
    catalog, _ = build(text, index, vectors, spec)
    cpu = time.process_time() - cpu
    del catalog
    gc.collect()
    tracemalloc.start()
    catalog, after_index = build(text, index, vectors, spec)
    total = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "items": n,
        "catalog_b": after_index / n,
        "fragments_b": (total - after_index) / n,
        "total_mb": total / 2**20,
        "cpu_s": cpu,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="Catalog sizes (items).")
    p.add_argument("--no-write", action="store_true", help="Do not touch BENCHMARKS.md.")
    a = p.parse_args()
    rows = [measure(int(n)) for n in a.sizes.split(",")]
    table = "\n".join(
        [
            "| items | catalog B / item | fragments B / item | total MiB | CPU s to build |",
            "| ---: | ---: | ---: | ---: | ---: |",
            *(
                f"| {r['items']:,} | {r['catalog_b']:.0f} | {r['fragments_b']:.0f} "
                f"| {r['total_mb']:,.0f} | {r['cpu_s']:.1f} |"
                for r in rows
            ),
        ]
    )
    print(table)
    if a.no_write:
        return
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    intro = (
        f"Command: `python -m bench.catalog_memory --sizes {a.sizes}`  \n"
        f"Date: {when}  \nMachine: {machine()}\n\n"
        "Python memory a serving worker keeps per catalog item (tracemalloc, after the "
        "structures are built from items.json text: `index.ItemIndex`'s catalog and the "
        "engine's pre-rendered answer fragments; the FAISS index and vectors are "
        "memory-mapped files, shared between workers, and not counted)."
    )
    write_section("Catalog memory", f"## Catalog memory\n\n{intro}\n\n{table}\n")


if __name__ == "__main__":
    main()
