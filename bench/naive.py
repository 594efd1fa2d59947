"""The load benchmark's reference point: the issue's "naive endpoint".

``POST /naive {"recent_items": [...]}`` averages the items' vectors and runs one flat
FAISS inner-product search over the catalog for the top 10: no cache, no model, no
exclusions, no middleware. The issue calibrates its throughput targets with it (about half
of a no-op endpoint's requests/s, and "the cache-hit path should beat" it), so
``bench.load`` measures it in the same run as the service.

``python -m bench.naive --port P --workers N`` serves it as ``python -m service serve``
serves the service (``service.server.run``: the same uvicorn and socket handling), from
the bundle in ``ARTIFACTS_DIR``.
"""

from __future__ import annotations

import argparse
import os
from contextlib import asynccontextmanager

import faiss
import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

K = 10


class NaiveRequest(BaseModel):
    recent_items: list[str]


class Catalog:
    def __init__(self, bundle: str):
        from index import ItemIndex

        index = ItemIndex.load(bundle)
        self.ids = list(index.item_ids)
        self.internal = {item: i for i, item in enumerate(self.ids)}
        vectors = np.ascontiguousarray(index.vectors(np.arange(len(self.ids))), np.float32)
        self.vectors = vectors
        self.flat = faiss.IndexFlatIP(vectors.shape[1])
        self.flat.add(vectors)


@asynccontextmanager
async def lifespan(app: FastAPI):
    faiss.omp_set_num_threads(1)
    app.state.catalog = Catalog(os.environ["ARTIFACTS_DIR"])
    yield


app = FastAPI(title="naive endpoint (bench reference)", lifespan=lifespan)


@app.get("/healthz")
@app.get("/readyz")
async def healthz() -> dict:
    return {"status": "ok"}


@app.post("/naive")
async def naive(body: NaiveRequest) -> dict:
    catalog: Catalog = app.state.catalog
    rows = [catalog.internal.get(item) for item in body.recent_items]
    if not rows or None in rows:
        raise HTTPException(422, "recent_items: give known item ids")
    scores, found = catalog.flat.search(catalog.vectors[rows].mean(0, keepdims=True), K)
    return {
        "items": [
            {"item_id": catalog.ids[i], "score": s}
            for i, s in zip(found[0].tolist(), scores[0].tolist(), strict=True)
        ]
    }


def main() -> None:
    from service.server import run

    p = argparse.ArgumentParser(prog="python -m bench.naive", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args()
    run("bench.naive:app", host=args.host, port=args.port, workers=args.workers,
        log_level=args.log_level)  # fmt: skip


if __name__ == "__main__":
    main()
