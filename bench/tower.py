"""User-tower forward pass, eager vs traced: ``python -m bench.tower --bundle DIR``.

Times ``Engine.encode`` (what a micro-batch of cache misses runs on the compute thread)
for sequence queries of 3–6 recent items, with ``TRACED_TOWER`` off and on, in the same
process, one torch thread. Prints a table and writes the ``## Tower`` section of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime

import numpy as np
import torch

from bench._common import machine, write_section
from service.engine import Engine, Query


def time_encode(engine: Engine, queries: list[Query], repeats: int) -> float:
    """Median seconds of one ``encode`` call over ``repeats`` calls (after a warm-up)."""
    for _ in range(10):
        engine.encode(queries)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.encode(queries)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tower", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="artifacts/current", help="bundle with an index")
    p.add_argument("--batches", default="1,4,16,32")
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    eager, traced = Engine(args.bundle, traced=False), Engine(args.bundle)
    rng = random.Random(0)
    rows = []
    for n in map(int, args.batches.split(",")):
        queries = [
            Query(features={}, sequence=rng.sample(range(eager.n_items), rng.randint(3, 6)))
            for _ in range(n)
        ]
        same = np.abs(eager.encode(queries) - traced.encode(queries)).max()
        e, t = (time_encode(x, queries, args.repeats) for x in (eager, traced))
        rows.append(f"| {n} | {e * 1e3:.2f} | {t * 1e3:.2f} | {e / t:.1f}× | {same:.1e} |")
    text = "\n".join(
        [
            "| batch | eager ms | traced ms | speed-up | max abs difference |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(f"traced: {traced.forward.reason}\n{text}")
    if args.no_write:
        return
    command = "python -m bench.tower " + " ".join(argv if argv is not None else sys.argv[1:])
    cfg = eager.cfg
    write_section(
        "Tower",
        "\n".join(
            [
                "## Tower",
                "",
                f"Command: `{command.strip()}`  ",
                f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
                f"Machine: {machine()}, 1 torch thread  ",
                f"Bundle: `{eager.version}`: encoder={cfg.encoder}, members={cfg.members}, "
                f"d={cfg.vector_dim}, max_len={cfg.max_len}",
                "",
                "One `Engine.encode` call (the user-tower forward pass of a micro-batch of cache "
                "misses) for sequence queries of 3–6 recent items, median of "
                f"{args.repeats} calls, `TRACED_TOWER=false` vs the default in the same process.",
                "",
                text,
            ]
        ),
    )
    print("wrote the ## Tower section of docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
