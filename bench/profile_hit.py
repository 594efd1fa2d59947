"""Where a cache-hit ``POST /recommend`` spends its CPU, in process.

Wall-clock req/s on a shared 2-core machine is noise; CPU time per request in one process
is not. This drives ASGI apps directly (a hand-made HTTP scope, no socket, no HTTP client)
and measures ``time.process_time`` per call, in alternating rounds (the median of the
rounds is printed): whole cache hits (``{"user_id": ...}`` bodies whose vectors are
cached) with the Redis store and the in-process store, one at a time and ``--concurrency``
at a time (one ``gather``: what reaches the store in one event-loop iteration under load,
so the Redis store's coalesced pipelines show); each layer alone around a
constant answer (the two middlewares; a bare FastAPI route with the body model, then its
router-level API-key dependency, then ``ServingDep``); and the service's own steps called
directly (``recommend.recommend``, the store's read, redis-py's commands, body
validation). ``bench.naive``'s endpoint is measured the same way for reference.

    python -m bench.profile_hit --bundle /tmp/wt16-ml100k/current --requests 2000

With ``--profile redis`` (or ``local``) it also prints cProfile's top functions (CPU
time, by tottime and by cumulative) over full hits with that store.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen, int, str]:
    port, workdir = _free_port(), tempfile.mkdtemp(prefix="profile-hit-redis-")
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port, workdir


class Client:
    """Calls an ASGI app as uvicorn would: one http scope, one body message."""

    def __init__(self, app):
        self.app, self.last_body = app, b""

    async def post(self, path: str, body: bytes) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
        }
        sent = False
        status = [0]

        async def receive():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                self.last_body = message.get("body", b"")

        await self.app(scope, receive, send)
        return status[0]


def cpu_us(n: int, call: Callable[[int], Awaitable[object]]) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        start = time.process_time()
        for i in range(n):
            await call(i)
        return (time.process_time() - start) / n * 1e6

    return run


async def measure(args) -> list[tuple[str, float, str]]:
    import faiss

    from bench.naive import Catalog
    from bench.naive import app as naive_app
    from service.app import create_app
    from service.core.config import Settings
    from service.recommend import recommend
    from service.schemas import RecommendRequest

    faiss.omp_set_num_threads(1)
    users = [u["id"] for u in json.loads((Path(args.bundle) / "users.json").read_text())]
    users = users[: args.users]
    bodies = [json.dumps({"user_id": u}).encode() for u in users]
    items = json.loads((Path(args.bundle) / "items.json").read_text())
    item_ids = [item["id"] for item in items]
    naive_body = json.dumps({"recent_items": item_ids[:10]}).encode()

    redis, port, workdir = start_redis()
    os.environ["ARTIFACTS_DIR"] = args.bundle
    apps = {}
    contexts = []
    try:
        for name, store in (("redis", f"redis://127.0.0.1:{port}/0"), ("local", None)):
            settings = Settings(
                artifacts_dir=str(Path(args.bundle).parent), redis_url=store, log_level="warning"
            )
            app = create_app(settings)
            ctx = app.router.lifespan_context(app)
            await ctx.__aenter__()
            contexts.append(ctx)
            apps[name] = app
        naive_app.state.catalog = Catalog(args.bundle)

        # warm: every user's vector computed once and cached (the misses), then hits
        for app in apps.values():
            client = Client(app)
            for body in bodies:
                assert await client.post("/recommend", body) == 200
            for body in bodies:
                assert await client.post("/recommend", body) == 200
                assert b'"cache":"hit"' in client.last_body, client.last_body[-200:]
        n = args.requests

        def hits(app):
            client = Client(app)
            return cpu_us(n, lambda i: client.post("/recommend", bodies[i % len(bodies)]))

        def concurrent_hits(app, c: int):
            """``c`` requests at a time (one ``gather``): what reaches the store in one
            event-loop iteration, as under load."""
            client = Client(app)

            async def wave(i):
                base = i * c
                await asyncio.gather(
                    *(client.post("/recommend", bodies[(base + j) % len(bodies)]) for j in range(c))
                )

            run = cpu_us(max(1, n // c), wave)

            async def per_request() -> float:
                return await run() / c

            return per_request

        serving_local = _serving(apps["local"])
        serving_redis = _serving(apps["redis"])
        requests = [RecommendRequest.model_validate_json(b) for b in bodies]

        def direct(serving):
            return cpu_us(
                n, lambda i: recommend([requests[i % len(requests)]], [("body",)], serving)
            )

        def store_read(serving):
            engine, store = serving.engine, serving.store
            dim = engine.cfg.vector_dim

            async def call(i):
                user = users[i % len(users)]
                await store.read(user, store.user_key(user, engine.version), dim)

            return cpu_us(n, call)

        client = serving_redis.store.link.client
        both = client.register_script(
            "return {redis.call('LRANGE', KEYS[1], 0, -1), redis.call('GET', KEYS[2])}"
        )

        def redis_keys(i):
            user = users[i % len(users)]
            store = serving_redis.store
            return store.history_key(user), store.user_key(user, serving_redis.engine.version).key

        async def one_get(i):
            await client.get(redis_keys(i)[1])

        async def one_script(i):
            await both(keys=list(redis_keys(i)))

        async def validate(i):
            RecommendRequest.model_validate_json(bodies[i % len(bodies)])

        from service.core.security import BodyGuardMiddleware
        from service.metrics import Metrics, MetricsMiddleware

        guarded = BodyGuardMiddleware(constant_app, limit=262_144)
        timed = MetricsMiddleware(constant_app, Metrics())
        naive = Client(naive_app)
        bare = bare_apps(apps["local"].state.runtime)
        runs = {
            "hit, redis store (full app)": hits(apps["redis"]),
            "hit, in-process store (full app)": hits(apps["local"]),
            f"hit, redis store, {args.concurrency} at a time": concurrent_hits(
                apps["redis"], args.concurrency
            ),
            f"hit, in-process store, {args.concurrency} at a time": concurrent_hits(
                apps["local"], args.concurrency
            ),
            "constant ASGI app (the driver's own cost)": hits(constant_app),
            "  inside BodyGuardMiddleware": hits(guarded),
            "  inside MetricsMiddleware": hits(timed),
            "bare FastAPI route: body model, constant answer": hits(bare["body"]),
            "  + router-level require_api_key": hits(bare["body+api-key"]),
            "  + ServingDep": hits(bare["body+api-key+serving"]),
            "recommend.recommend() direct, in-process": direct(serving_local),
            "recommend.recommend() direct, redis": direct(serving_redis),
            "store.read() redis (one pipeline)": store_read(serving_redis),
            "store.read() in-process": store_read(serving_local),
            "redis-py alone: one GET": cpu_us(n, one_get),
            "redis-py alone: one EVALSHA (LRANGE + GET)": cpu_us(n, one_script),
            "RecommendRequest.model_validate_json": cpu_us(n, validate),
            "naive endpoint (bench.naive)": cpu_us(n, lambda i: naive.post("/naive", naive_body)),
        }
        results: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                results[name].append(await run())
        if args.profile:
            profile = cProfile.Profile(time.process_time)
            profile.enable()
            await hits(apps[args.profile])()
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        return [
            (name, statistics.median(v), f"{min(v):.0f}-{max(v):.0f}")
            for name, v in results.items()
        ]
    finally:
        for ctx in contexts:
            await ctx.__aexit__(None, None, None)
        redis.terminate()
        redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def bare_apps(runtime) -> dict[str, object]:
    """FastAPI alone, layer by layer: a route taking a RecommendRequest body and answering
    a constant body; the same under a router-level ``require_api_key``; the same also
    taking ``ServingDep`` (the layers the service's /recommend route has)."""
    from fastapi import APIRouter, Depends, FastAPI, Response

    from service.core import errors
    from service.core.security import require_api_key
    from service.deps import ServingDep
    from service.schemas import RecommendRequest

    out = {}
    for name in ("body", "body+api-key", "body+api-key+serving"):
        router = APIRouter()
        if name == "body+api-key+serving":

            @router.post("/recommend")
            async def route(body: RecommendRequest, serving: ServingDep) -> Response:
                return Response(b"{}", media_type="application/json")
        else:

            @router.post("/recommend")
            async def route(body: RecommendRequest) -> Response:
                return Response(b"{}", media_type="application/json")

        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        errors.install(app)
        deps = [Depends(require_api_key)] if name != "body" else []
        app.include_router(router, dependencies=deps)
        app.state.runtime, app.state.settings = runtime, runtime.settings
        out[name] = app
    return out


async def constant_app(scope, receive, send) -> None:
    """The cheapest ASGI answer: what the middlewares below wrap to time them alone."""
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _serving(app):
    from service.deps import Serving

    rt = app.state.runtime
    return Serving(rt.engine, rt.store, rt.batcher, rt.settings, rt.metrics)


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile_hit", description=__doc__.split("\n")[0]
    )
    p.add_argument("--bundle", required=True, help="a bundle directory with an index")
    p.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (median shown)")
    p.add_argument(
        "--concurrency", type=int, default=32, help="requests at a time in the concurrent rows"
    )
    p.add_argument("--users", type=int, default=200, help="users cycled (all cached first)")
    p.add_argument(
        "--profile",
        choices=("redis", "local"),
        help="also print cProfile's top functions (CPU time) over hits with this store",
    )
    args = p.parse_args()
    rows = asyncio.run(measure(args))
    print(f"\n{args.requests} requests x {args.rounds} rounds, CPU µs per call (median, range)\n")
    print("| measurement | CPU µs | rounds |")
    print("|---|---|---|")
    for name, median, spread in rows:
        print(f"| {name} | {median:.0f} | {spread} |")


if __name__ == "__main__":
    main()
