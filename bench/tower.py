"""User-tower forward pass, eager vs traced: ``python -m bench.tower --bundle DIR``.

Times ``Engine.encode`` (what a micro-batch of cache misses runs on the compute thread)
for sequence queries of a few recent items and of a full window (``max_len``), with
``TRACED_TOWER`` off and on, in the same process, one torch thread. A second table times
the sequence encoder alone: every position encoded (``UserTower.encode_sequence``, what
training needs) vs the last position only (``UserTower.encode_last``, what the forward
pass runs). Prints both tables and writes the ``## Tower`` section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time
from datetime import UTC, datetime

import numpy as np
import torch

from bench._common import machine, write_section
from service.engine import Engine, Query


def median_seconds(call, repeats: int) -> float:
    """Median seconds of ``call()`` over ``repeats`` calls (after a warm-up)."""
    for _ in range(10):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def sequence_queries(engine: Engine, n: int, length: str, rng: random.Random) -> list[Query]:
    """n queries of ``length`` recent items: "short" (3-6) or "full" (max_len)."""
    sizes = (3, 6) if length == "short" else (engine.cfg.max_len, engine.cfg.max_len)
    items = range(engine.n_items)
    return [Query(features={}, sequence=rng.sample(items, rng.randint(*sizes))) for _ in range(n)]


def encode_table(eager: Engine, traced: Engine, batches: list[int], repeats: int) -> str:
    rng, rows = random.Random(0), []
    for length in ("short", "full"):
        for n in batches:
            queries = sequence_queries(eager, n, length, rng)
            same = np.abs(eager.encode(queries) - traced.encode(queries)).max()
            e, t = (
                median_seconds(functools.partial(x.encode, queries), repeats)
                for x in (eager, traced)
            )
            items = "3–6" if length == "short" else str(eager.cfg.max_len)
            rows.append(
                f"| {n} | {items} | {e * 1e3:.2f} | {t * 1e3:.2f} | {e / t:.1f}× | {same:.1e} |"
            )
    head = "| batch | recent items | eager ms | traced ms | speed-up | max abs difference |"
    return "\n".join([head, "|---|---|---|---|---|---|", *rows])


def every_position(tower, seq: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The state after item ``at`` of each row, from the encoding of every position."""
    return tower.encode_sequence(seq)[torch.arange(len(at)), at]


def positions_table(engine: Engine, batches: list[int], repeats: int) -> str:
    """The sequence encoder of one tower (the first member), full windows, eager."""
    tower = engine.tower.members[0] if engine.cfg.members > 1 else engine.tower
    length, rows = engine.cfg.max_len, []
    gen = torch.Generator().manual_seed(0)
    for n in batches:
        seq = torch.randn(n, length, engine.cfg.dim, generator=gen)
        at = torch.full((n,), length)
        every_call = functools.partial(every_position, tower, seq, at)
        last_call = functools.partial(tower.encode_last, seq, at)
        with torch.inference_mode():
            every, last = median_seconds(every_call, repeats), median_seconds(last_call, repeats)
            diff = every_call() - last_call()
        rows.append(
            f"| {n} | {every * 1e3:.2f} | {last * 1e3:.2f} | {every / last:.1f}× "
            f"| {diff.abs().max():.1e} |"
        )
    head = "| batch | every position ms | last position ms | speed-up | max abs difference |"
    return "\n".join([head, "|---|---|---|---|---|", *rows])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tower", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="artifacts/current", help="bundle with an index")
    p.add_argument("--batches", default="1,4,16,32")
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    eager, traced = Engine(args.bundle, traced=False), Engine(args.bundle)
    batches = [int(n) for n in args.batches.split(",")]
    encode = encode_table(eager, traced, batches, args.repeats)
    positions = positions_table(eager, batches, args.repeats)
    print(f"traced: {traced.forward.reason}\n{encode}\n\n{positions}")
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
                "misses) for sequence queries of 3–6 recent items and of a full window, median "
                f"of {args.repeats} calls, `TRACED_TOWER=false` vs the default in the same "
                "process.",
                "",
                encode,
                "",
                "The sequence encoder of one member alone, full windows, eager: every position "
                "encoded (`UserTower.encode_sequence`, what training needs) vs the last "
                "position only (`UserTower.encode_last`, what the forward pass runs: the last "
                "attention layer for one query per row).",
                "",
                positions,
            ]
        ),
    )
    print("wrote the ## Tower section of docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
