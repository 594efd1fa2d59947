"""What an item API write costs: ``python -m bench.item_api --bundle artifacts/current``.

On a private copy of the bundle (``--items N`` grows its catalog first, as
``bench.big_catalog`` does, and rebuilds it as IVF), in one process:

- **full reload**: ``Engine(path)``, what a new model costs a worker (weights, trace check,
  index, catalog);
- **index swap**: ``Engine.with_index``, what every worker pays per item write instead
  (the new index version and what derives from it; the model is kept);
- **write**: ``index.updates.apply_changes`` for one item and for a batch of 100 (the
  writer lock, load the current version, add, write the next one), and the item tower
  on their features.

Wall and CPU seconds (``time.process_time``: every thread of this process), median of
``--repeat`` runs, the cyclic GC paused as the service pauses it for loads and swaps.
Results: a table on stdout and the ``## Item API`` section of docs/BENCHMARKS.md
(``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench._common import machine, write_section


def timed(fn, *args) -> tuple[object, float, float]:
    """``fn(*args)`` with the cyclic GC paused, as the service runs loads and swaps."""
    from index.store import gc_paused

    with gc_paused():
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args)
        return out, time.perf_counter() - wall, time.process_time() - cpu


def median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def prepare(source: Path, items: int, out: Path) -> Path:
    """A private copy of ``source``'s current bundle (grown by ``items``); its dir."""
    from bench.big_catalog import build
    from training.bundle import point_current, resolve

    if items:
        return resolve(build(source, out, items))
    src = resolve(source)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copytree(src, out / src.name)
    point_current(out, src.name)
    return out / src.name


def measure(bundle: Path, repeat: int) -> dict[str, tuple[float, float]]:
    from index import updates
    from index.store import section_of
    from service.engine import Engine, bundle_stamp

    section = section_of(bundle)
    catalog = (section["active"], section["kind"])
    full = []
    for _ in range(repeat):
        engine, wall, cpu = timed(Engine, bundle)
        full.append((wall, cpu))
    features = {"genres": ["Drama"], "year": 1999}
    results: dict[str, list[tuple[float, float]]] = {"tower1": [], "write1": [], "swap": []}
    results |= {"tower100": [], "write100": []}
    for n in range(repeat):
        vectors, wall, cpu = timed(engine.item_encoder, [features])
        results["tower1"].append((wall, cpu))
        one = [{"id": f"bench-{n}", "title": "bench", "features": features}]
        _, wall, cpu = timed(updates.apply_changes, bundle, one, [], vectors)
        results["write1"].append((wall, cpu))
        stamp = bundle_stamp(bundle)
        engine, wall, cpu = timed(engine.with_index, stamp)
        results["swap"].append((wall, cpu))
        batch = [
            {"id": f"bench-{n}-{i}", "title": "bench", "features": features} for i in range(100)
        ]
        vectors, wall, cpu = timed(engine.item_encoder, [it["features"] for it in batch])
        results["tower100"].append((wall, cpu))
        _, wall, cpu = timed(updates.apply_changes, bundle, batch, [], vectors)
        results["write100"].append((wall, cpu))
    out = {"full": median(full)} | {k: median(v) for k, v in results.items()}
    out["items"] = catalog
    return out


ROWS = [
    ("full", "full reload: `Engine(path)` (model + index + catalog)"),
    ("swap", "index swap: `Engine.with_index` (what each worker pays per write)"),
    ("tower1", "item tower, 1 item"),
    ("write1", "write 1 item: `apply_changes` (lock, load, add, write version)"),
    ("tower100", "item tower, 100 items"),
    ("write100", "write 100 items in one batch"),
]


def table(runs: dict[int, dict]) -> str:
    head = "| step | " + " | ".join(
        f"{r['items'][0]:,} items ({r['items'][1]}) wall / CPU s" for r in runs.values()
    )
    lines = [head + " |", "| --- |" + " --- |" * len(runs)]
    for key, label in ROWS:
        cells = " | ".join(f"{r[key][0]:.3f} / {r[key][1]:.3f}" for r in runs.values())
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.item_api", description=__doc__)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle with an item tower")
    p.add_argument("--items", default="0", help="comma list: catalog growth per run (0 = as is)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "towerrec-items")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    runs = {}
    for grow in (int(x) for x in args.items.split(",")):
        bundle = prepare(args.bundle, grow, args.out / str(grow))
        runs[grow] = measure(bundle, args.repeat)
        shutil.rmtree(args.out / str(grow), ignore_errors=True)
    text = table(runs)
    print(text)
    if args.no_write:
        return
    command = " ".join(["python -m bench.item_api", *(argv if argv is not None else sys.argv[1:])])
    write_section(
        "Item API",
        f"## Item API\n\n`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}; "
        f"torch and FAISS on 1 thread, median of {args.repeat} runs.\n\n{text}\n",
    )


if __name__ == "__main__":
    main()
