"""``python -m index`` / ``towerrec-index``: build, update, compact, inspect and evaluate."""

from __future__ import annotations

import functools
import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from index import store, updates
from index.build import build_index, human_bytes
from index.errors import UnknownItemError
from index.evaluate import evaluate
from index.factory import IndexSpec
from training.bundle import BundleError

log = logging.getLogger("index")
app = typer.Typer(
    help="Build, update, inspect and evaluate the FAISS item index of a bundle.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Kind(StrEnum):
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"


BundleOpt = Annotated[
    Path, typer.Option("--bundle", help="Bundle directory, artifacts root or `current` link.")
]
KindOpt = Annotated[
    Kind, typer.Option("--kind", help="flat = exact (up to ~200k items); hnsw / ivf = approximate.")
]
HnswM = Annotated[int, typer.Option("--hnsw-m", "-M", help="HNSW: graph degree M.")]
EfConstruction = Annotated[int, typer.Option(help="HNSW: candidate list size while building.")]
EfSearch = Annotated[int, typer.Option(help="HNSW: candidate list size while searching.")]
Nlist = Annotated[int | None, typer.Option(help="IVF: number of lists (default ~4·√N).")]
Nprobe = Annotated[
    int | None, typer.Option(help="IVF: lists scanned per query (default max(16, nlist/64)).")
]
Pq = Annotated[
    int,
    typer.Option(
        "--pq", help="IVF: PQ sub-quantizers m (must divide d); 0 = IVFFlat (exact vectors)."
    ),
]
PqBits = Annotated[int, typer.Option(help="IVF: bits per PQ code.")]
Normalize = Annotated[
    bool,
    typer.Option(
        "--normalize",
        help="Index L2-normalised vectors (cosine) instead of the raw inner "
        "product the towers were trained for; see docs/BUNDLE.md.",
    ),
]
ItemIdOpt = Annotated[str | None, typer.Option("--item-id", help="External item id.")]
FeaturesOpt = Annotated[
    str | None,
    typer.Option(help='Item features as JSON, e.g. \'{"genres": ["Drama"], "year": 1999}\'.'),
]
FromFile = Annotated[
    Path | None, typer.Option(help="JSON lines, one item per line: {id, title, genres?, features}.")
]
VectorFile = Annotated[
    Path | None,
    typer.Option(
        help=".npy float32 [d] or [n, d] raw item-tower vector(s) to use instead of the tower."
    ),
]


def _handle_errors(command):
    """Turn the errors a user can cause into one clear line and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (BundleError, UnknownItemError, ValueError, FileNotFoundError) as e:
            log.error("error: %s", e)
            raise typer.Exit(1) from None

    return wrapper


def _spec(
    kind: Kind,
    hnsw_m: int,
    ef_construction: int,
    ef_search: int,
    nlist: int | None,
    nprobe: int | None,
    pq: int,
    pq_nbits: int,
) -> IndexSpec:
    return IndexSpec(
        kind=kind.value,
        hnsw_m=hnsw_m,
        ef_construction=ef_construction,
        ef_search=ef_search,
        nlist=nlist,
        nprobe=nprobe,
        pq_m=pq,
        pq_nbits=pq_nbits,
    )


@app.command()
@_handle_errors
def build(
    bundle: BundleOpt = Path("artifacts/current"),
    kind: KindOpt = Kind.flat,
    hnsw_m: HnswM = 32,
    ef_construction: EfConstruction = 80,
    ef_search: EfSearch = 64,
    nlist: Nlist = None,
    nprobe: Nprobe = None,
    pq: Pq = 0,
    pq_nbits: PqBits = 8,
    normalize: Normalize = False,
    if_missing: Annotated[
        bool,
        typer.Option(
            "--if-missing", help="Do nothing when the bundle already has a loadable index."
        ),
    ] = False,
    threads: Annotated[int | None, typer.Option(help="Build threads (default: all cores).")] = None,
) -> None:
    """Build an index over the bundle's item embeddings as a new index version."""
    build_index(
        bundle,
        _spec(kind, hnsw_m, ef_construction, ef_search, nlist, nprobe, pq, pq_nbits),
        normalize=normalize,
        if_missing=if_missing,
        threads=threads,
        progress=True,
    )


@app.command()
@_handle_errors
def add(
    bundle: BundleOpt = Path("artifacts/current"),
    item_id: ItemIdOpt = None,
    title: Annotated[str, typer.Option(help="Display title.")] = "",
    features: FeaturesOpt = None,
    from_file: FromFile = None,
    vector_file: VectorFile = None,
) -> None:
    """Add new item(s): vectors from the item tower on their features (or --vector-file)."""
    items = _items(item_id, from_file, {"title": title, "features": _json(features) or {}})
    updates.add_items(bundle, items, _vectors(vector_file))


@app.command()
@_handle_errors
def replace(
    bundle: BundleOpt = Path("artifacts/current"),
    item_id: ItemIdOpt = None,
    title: Annotated[str | None, typer.Option(help="New title (default: keep).")] = None,
    features: FeaturesOpt = None,
    from_file: FromFile = None,
    vector_file: VectorFile = None,
) -> None:
    """Give existing item(s) a new vector, from new features or from --vector-file."""
    items = _items(item_id, from_file, {"title": title, "features": _json(features)})
    updates.replace_items(bundle, items, _vectors(vector_file))


@app.command()
@_handle_errors
def remove(
    bundle: BundleOpt = Path("artifacts/current"),
    item_id: Annotated[
        list[str], typer.Option("--item-id", help="External item id (repeat for several).")
    ] = ...,
) -> None:
    """Remove item(s) from serving (hnsw: tombstoned until `compact`)."""
    updates.remove_items(bundle, item_id)


@app.command()
@_handle_errors
def compact(bundle: BundleOpt = Path("artifacts/current")) -> None:
    """Rebuild the index from the active items (drops HNSW tombstones, retrains IVF)."""
    updates.compact(bundle, progress=True)


@app.command()
@_handle_errors
def info(bundle: BundleOpt = Path("artifacts/current")) -> None:
    """Show the bundle's index section (kind, params, counts, files, recent operations)."""
    section = store.section_of(bundle)
    if section is None:
        typer.echo("no index (run `python -m index build`)")
        raise typer.Exit(1)
    typer.echo(
        f"{section['kind']} index v{section['version']:04d} at {section['path']}: "
        f"{section['active']} active of {section['items']} items, d={section['dim']}, "
        f"{section['tombstones']} tombstones, normalized={section['normalized']}"
    )
    typer.echo(f"params {json.dumps(section['params'])}, faiss {section['faiss_version']}")
    for name, entry in section["files"].items():
        typer.echo(f"  {name:12} {human_bytes(entry['bytes']):>9}  sha256 {entry['sha256']}")
    for op in section["history"][-5:]:
        items = ", ".join(op.get("items", [])[:5])
        typer.echo(f"  v{op['version']:04d} {op['at']} {op['op']} {items}".rstrip())


@app.command("eval")
@_handle_errors
def eval_command(
    bundle: BundleOpt = Path("artifacts/current"),
    kind: KindOpt = Kind.ivf,
    hnsw_m: HnswM = 32,
    ef_construction: EfConstruction = 80,
    ef_search: EfSearch = 64,
    nlist: Nlist = None,
    nprobe: Nprobe = None,
    pq: Pq = 0,
    pq_nbits: PqBits = 8,
    normalize: Normalize = False,
    queries: Annotated[int, typer.Option(help="Queries per query set.")] = 1000,
    threads: Annotated[int, typer.Option(help="FAISS threads while searching.")] = 1,
) -> None:
    """Recall@10/@100 against exact flat search, and single-query latency p50/p99.

    Builds the index in memory (the bundle is not changed). Queries: a sample of the
    item vectors, and user-like Gaussian vectors with the catalog's mean and covariance.
    """
    spec = _spec(kind, hnsw_m, ef_construction, ef_search, nlist, nprobe, pq, pq_nbits)
    r = evaluate(bundle, spec, normalize=normalize, queries=queries, threads=threads)
    typer.echo(
        f"{r['spec']}{' (normalized)' if r['normalized'] else ''}: {r['items']} items, "
        f"d={r['dim']}, built in {r['build_s']:.2f} s, {human_bytes(r['index_bytes'])}"
    )
    typer.echo(
        f"{'queries':<12}{'n':>6}{'recall@10':>11}{'recall@100':>12}"
        f"{'p50 ms':>9}{'p99 ms':>9}   ({r['threads']} thread(s), one query per call)"
    )
    for name, s in r["queries"].items():
        typer.echo(
            f"{name:<12}{s['queries']:>6}{s['recall@10']:>11.4f}{s['recall@100']:>12.4f}"
            f"{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}"
        )


def _json(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"not valid JSON: {e}", param_hint="--features") from e
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--features")
    return value


def _items(
    item_id: str | None, from_file: Path | None, fields: dict[str, Any]
) -> list[dict[str, Any]]:
    """One item from the flags, or many from a JSON-lines file (exactly one of the two)."""
    if (item_id is None) == (from_file is None):
        raise typer.BadParameter("give either --item-id or --from-file")
    if item_id is not None:
        return [{"id": item_id, **{k: v for k, v in fields.items() if v is not None}}]
    items = []
    for n, line in enumerate(from_file.read_text().splitlines(), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{from_file}:{n}: not valid JSON ({e})") from e
            if not isinstance(items[-1], dict):
                raise ValueError(f"{from_file}:{n}: expected a JSON object")
    if not items:
        raise ValueError(f"{from_file}: no items")
    return items


def _vectors(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    return np.atleast_2d(np.load(path, allow_pickle=False)).astype(np.float32)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
