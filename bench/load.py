"""Load benchmark of the HTTP service: ``python -m bench.load --bundle artifacts/current``.

Starts a redis-server and ``python -m service serve`` (uvicorn, 127.0.0.1 only) for each
worker count, then drives, for each concurrency, four scenarios for ``--duration`` seconds
each:

- ``healthz``        GET /healthz: the ceiling of the stack (routing, middleware, JSON)
- ``similar``        GET /similar-items/{random item}
- ``recommend-hit``  POST /recommend {"user_id": ...} over bundle users whose vectors
                     were cached beforehand (one Redis round trip, one search, no torch)
- ``recommend-miss`` POST /recommend {"recent_items": [3-6 random items]}: a new input
                     every request (cache miss: forward pass + search + Redis write)

and, in the same rounds, the issue's reference endpoint (``bench.naive``: the mean of 10
item vectors + one flat FAISS search on a bare FastAPI app) with its own /healthz, served
the same way (``--no-reference`` skips it).

Each scenario's time is cut into ``--slices`` runs, taken in turns with the other scenarios
(and variants): this machine's speed drifts by ±15 % within a minute, and a ratio to
/healthz measured minutes apart carried that drift; interleaved, every scenario sees the
same mix of fast and slow moments. A row merges its slices: requests and errors add up,
and the percentiles come from the pooled latency distributions (each slice reports its
1,000 quantiles at 0.05 %, 0.15 %, ... 99.95 %).

The load generator is wrk (C, one thread, Lua scripts for per-request bodies) when it is
installed, else a bounded asyncio + httpx client (which then competes with the server for
the 2 cores). Cache hit/miss counts come from the server's /metrics, so each scenario's
row says whether it measured what it claims. Every run is bounded in time and count and
only talks to 127.0.0.1. Results: a table on stdout, JSON under bench/results/, and the
``## Load`` section of docs/BENCHMARKS.md (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench._common import machine, write_section

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("healthz", "similar", "recommend-hit", "recommend-miss")
REFERENCE = "naive-endpoint"  # bench.naive, measured in the same rounds (--no-reference)
REFERENCE_SCENARIOS = ("healthz", "naive")
RESULTS_DIR = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "BENCHMARKS.md"


# --- processes ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    def __init__(
        self,
        bundle: str,
        redis_url: str,
        workers: int,
        env: dict[str, str],
        service_path: str | None = None,
        module: tuple[str, ...] = ("service", "serve"),
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-")
        full_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [service_path, str(ROOT)])),
            "ARTIFACTS_DIR": bundle,
            "REDIS_URL": redis_url,
            "RELOAD_POLL_S": "0",
            "TORCH_THREADS": "1",
            "FAISS_THREADS": "1",
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            **env,
        }
        full_env.pop("API_KEY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *module, "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", str(workers), "--log-level", "warning"],
            # `python -m` puts the working directory first on sys.path: another checkout
            # of service/ runs from its own directory (training/, index/ via PYTHONPATH)
            cwd=service_path or ROOT, env=full_env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_http(f"{self.url}/readyz", self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


# --- workload -----------------------------------------------------------------------------
@dataclass
class Workload:
    items: list[str]
    users: list[str]
    version: str
    summary: str


def load_workload(bundle: str, n_users: int) -> Workload:
    from training.bundle import ITEMS, USERS, load_json, read_manifest

    manifest = read_manifest(bundle)
    items = [it["id"] for it in load_json(bundle, ITEMS)]
    users = [u["id"] for u in load_json(bundle, USERS)][:n_users]
    model = manifest["model"]
    ds = manifest.get("dataset", {})
    summary = (
        f"{ds.get('name', '?')} bundle `{manifest['version']}`: {len(items)} items, "
        f"{len(load_json(bundle, USERS))} users, encoder={model['encoder']} × "
        f"{model.get('members', 1)} member(s) of d={model['dim']}"
        f" (max_len {model['max_len']}), user-id embedding={model['user_id_embedding']}"
    )
    return Workload(items, users, manifest["version"], summary)


def lua_list(values: list[str]) -> str:
    return "{" + ",".join(json.dumps(v) for v in values) + "}"


QUANTILES = 1000  # latency quantiles per slice, at (i + 0.5) / QUANTILES


LUA_DONE = f"""
done = function(summary, latency, requests)
  local e = summary.errors
  local q = {{}}
  for i = 1, {QUANTILES} do q[i] = latency:percentile((i - 0.5) * 100 / {QUANTILES}) end
  io.write(string.format(
    'RESULT {{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"quantiles_us":[%s]}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    table.concat(q, ",")))
end
"""


def lua_script(scenario: str, work: Workload) -> str:
    head = "math.randomseed(os.time())\n"
    if scenario == "healthz":
        return head + 'request = function() return wrk.format("GET", "/healthz") end\n' + LUA_DONE
    if scenario == "similar":
        return (
            head
            + f"""items = {lua_list(work.items)}
request = function()
  return wrk.format("GET", "/similar-items/" .. items[math.random(#items)] .. "?k=10")
end
"""
            + LUA_DONE
        )
    post = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
    if scenario == "naive":
        return head + post + lua_recent_items(work, "/naive", "10") + LUA_DONE
    if scenario == "recommend-hit":
        return (
            head
            + post
            + f"""users = {lua_list(work.users)}
n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/recommend", nil,
    '{{"user_id":"' .. users[(n % #users) + 1] .. '"}}')
end
"""
            + LUA_DONE
        )
    return head + post + lua_recent_items(work, "/recommend", "math.random(3, 6)") + LUA_DONE


def lua_recent_items(work: Workload, path: str, count: str) -> str:
    """wrk's ``request``: POST ``path`` {"recent_items": [``count`` distinct random items]}."""
    return f"""items = {lua_list(work.items)}
request = function()
  local k = {count}
  local picked, seen = {{}}, {{}}
  while #picked < k do
    local id = items[math.random(#items)]
    if not seen[id] then seen[id] = true; picked[#picked + 1] = '"' .. id .. '"' end
  end
  return wrk.format(nil, "{path}", nil,
    '{{"recent_items":[' .. table.concat(picked, ",") .. ']}}')
end
"""


@dataclass
class Result:
    variant: str
    workers: int
    scenario: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    non2xx: int
    cache_hits: int
    cache_misses: int
    cache_errors: int
    mean_batch: float  # requests per micro-batch (searches and forward passes)
    round_rps: list[float] = field(default_factory=list)  # per slice, in round order


def run_wrk(
    url: str, scenario: str, work: Workload, concurrency: int, duration: float, tmp: Path
) -> dict:
    script = tmp / f"{scenario}.lua"
    script.write_text(lua_script(scenario, work))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration:.0f}s", "--timeout", "5s",
         "-s", str(script), url],
        capture_output=True, text=True, timeout=duration + 60,
    ).stdout  # fmt: skip
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    return json.loads(line.removeprefix("RESULT "))


def python_request(scenario: str, work: Workload, rng: random.Random, n: int):
    if scenario == "healthz":
        return "GET", "/healthz", None
    if scenario == "similar":
        return "GET", f"/similar-items/{rng.choice(work.items)}?k=10", None
    if scenario == "recommend-hit":
        return "POST", "/recommend", {"user_id": work.users[n % len(work.users)]}
    if scenario == "naive":
        return "POST", "/naive", {"recent_items": rng.sample(work.items, 10)}
    return "POST", "/recommend", {"recent_items": rng.sample(work.items, rng.randint(3, 6))}


def run_python(url: str, scenario: str, work: Workload, concurrency: int, duration: float) -> dict:
    import httpx

    async def main() -> dict:
        latencies: list[float] = []
        errors = non2xx = 0
        counter = 0
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=5) as client:
            start = time.perf_counter()
            deadline = start + duration

            async def worker(seed: int) -> None:
                nonlocal errors, non2xx, counter
                rng = random.Random(seed)
                while time.perf_counter() < deadline:
                    counter += 1
                    method, path, body = python_request(scenario, work, rng, counter)
                    t0 = time.perf_counter()
                    try:
                        r = await client.request(method, path, json=body)
                        if r.status_code >= 300:
                            non2xx += 1
                    except httpx.HTTPError:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*(worker(i) for i in range(concurrency)))
            elapsed = time.perf_counter() - start
        latencies.sort()
        n = len(latencies)
        quantiles = [
            int(latencies[min(n - 1, int((i + 0.5) / QUANTILES * n))] * 1e6)
            for i in range(QUANTILES if n else 0)
        ]
        return {"requests": n + errors, "duration_us": int(elapsed * 1e6), "errors": errors,
                "non2xx": non2xx, "quantiles_us": quantiles}  # fmt: skip

    return asyncio.run(main())


def scrape(url: str) -> dict[str, float]:
    import httpx

    response = httpx.get(f"{url}/metrics", timeout=5)
    text = response.text if response.status_code == 200 else ""  # the reference has none
    out: dict[str, float] = {}
    for name in ("towerrec_cache_hits_total", "towerrec_cache_misses_total",
                 "towerrec_cache_errors_total", "towerrec_batch_size_sum",
                 "towerrec_batch_size_count"):  # fmt: skip
        out[name] = sum(float(m.group(1)) for m in re.finditer(
            rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))  # fmt: skip
    return out


def warm(url: str, work: Workload, scenarios: tuple[str, ...] = SCENARIOS) -> None:
    """Cache every hit-scenario user and run each scenario a little (JIT, allocators)."""
    import httpx

    with httpx.Client(base_url=url, timeout=10) as client:
        if "recommend-hit" in scenarios:
            for user in work.users:
                client.post("/recommend", json={"user_id": user}).raise_for_status()
        rng = random.Random(0)
        for n in range(200):
            for scenario in scenarios:
                method, path, body = python_request(scenario, work, rng, n)
                client.request(method, path, json=body).raise_for_status()


@dataclass
class Variant:
    """One service configuration: env overrides and optionally another service/ checkout."""

    name: str
    env: dict[str, str]
    path: str | None = None


def parse_variant(text: str) -> Variant:
    """``NAME=KEY=VALUE,KEY=VALUE[,path:DIR]``."""
    name, _, spec = text.partition("=")
    env, path = {}, None
    for part in filter(None, spec.split(",")):
        if part.startswith("path:"):
            path = part.removeprefix("path:")
        else:
            key, _, value = part.partition("=")
            env[key] = value
    return Variant(name, env, path)


@dataclass
class Slice:
    """One wrk (or python client) run of a scenario, with the server's counter deltas."""

    requests: int
    duration_us: int
    errors: int
    non2xx: int
    quantiles_us: list[int]
    cache_hits: int
    cache_misses: int
    cache_errors: int
    batches: float  # micro-batches run (count) and requests in them (sum)
    batched: float


def measure(
    server: Server,
    scenario: str,
    concurrency: int,
    duration: float,
    work: Workload,
    client: str,
    tmp: Path,
) -> Slice:
    before = scrape(server.url)
    if client == "wrk":
        raw = run_wrk(server.url, scenario, work, concurrency, duration, tmp)
    else:
        raw = run_python(server.url, scenario, work, concurrency, duration)
    after = scrape(server.url)

    def delta(name: str) -> float:
        return after[name] - before[name]

    return Slice(
        raw["requests"], raw["duration_us"], raw["errors"], raw["non2xx"], raw["quantiles_us"],
        int(delta("towerrec_cache_hits_total")), int(delta("towerrec_cache_misses_total")),
        int(delta("towerrec_cache_errors_total")), delta("towerrec_batch_size_count"),
        delta("towerrec_batch_size_sum"),
    )  # fmt: skip


def pooled_percentile(slices: list[Slice], p: float) -> int:
    """The ``p``-th percentile (µs) of all slices' requests together: each slice's quantiles
    stand for equal shares of its requests."""
    points = sorted(
        (q, s.requests / len(s.quantiles_us)) for s in slices if s.quantiles_us
        for q in s.quantiles_us
    )  # fmt: skip
    if not points:
        return 0
    total = sum(w for _, w in points)
    target, seen = p / 100 * total - 1e-9 * total, 0.0  # nearest rank, despite float sums
    for value, weight in points:
        seen += weight
        if seen >= target:
            return value
    return points[-1][0]


def merge(variant: str, workers: int, scenario: str, concurrency: int, slices: list[Slice]):
    """One table row from a scenario's interleaved slices."""
    seconds = sum(s.duration_us for s in slices) / 1e6
    requests = sum(s.requests for s in slices)
    p50, p95, p99 = (pooled_percentile(slices, p) / 1000 for p in (50, 95, 99))
    batches = sum(s.batches for s in slices)
    return Result(
        variant, workers, scenario, concurrency, requests, round(seconds, 2),
        round(requests / seconds, 1), p50, p95, p99, sum(s.errors for s in slices),
        sum(s.non2xx for s in slices), sum(s.cache_hits for s in slices),
        sum(s.cache_misses for s in slices), sum(s.cache_errors for s in slices),
        round(sum(s.batched for s in slices) / max(1.0, batches), 1),
        [round(s.requests / s.duration_us * 1e6, 1) for s in slices],
    )  # fmt: skip


def run_all(args: argparse.Namespace) -> tuple[list[Result], dict]:
    """Every variant is measured right after the others for each (workers, concurrency,
    scenario), so that they see the same background load of the machine."""
    from training.bundle import resolve

    bundle = str(resolve(args.bundle))
    work = load_workload(bundle, args.users)
    variants = [Variant("current", dict(kv.split("=", 1) for kv in args.env), args.service_path)]
    variants += [parse_variant(v) for v in args.baseline]
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    results: list[Result] = []
    redis = Redis()
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        for workers in args.workers:
            redis.flush()
            runs: list[tuple[str, Server, tuple[str, ...]]] = []  # name, server, scenarios
            try:
                for variant in variants:
                    env = {"CACHE_PREFIX": f"{variant.name}:", **variant.env}
                    server = Server(bundle, redis.url, workers, env, variant.path)
                    runs.append((variant.name, server, SCENARIOS))
                    warm(server.url, work)
                if args.reference:
                    server = Server(bundle, redis.url, workers, {}, module=("bench.naive",))
                    runs.append((REFERENCE, server, REFERENCE_SCENARIOS))
                    warm(server.url, work, REFERENCE_SCENARIOS)
                for concurrency in args.concurrency:
                    slices: dict[tuple[str, str], list[Slice]] = {}
                    for _ in range(args.slices):
                        for scenario in dict.fromkeys((*SCENARIOS, *REFERENCE_SCENARIOS)):
                            for name, server, scenarios in runs:
                                if scenario not in scenarios:
                                    continue
                                one = measure(
                                    server,
                                    scenario,
                                    concurrency,
                                    args.duration / args.slices,
                                    work,
                                    client,
                                    tmp,
                                )
                                slices.setdefault((name, scenario), []).append(one)
                    for (name, scenario), parts in slices.items():
                        results.append(merge(name, workers, scenario, concurrency, parts))
                        print(row(results[-1]), flush=True)
            finally:
                for _, server, _ in runs:
                    server.stop()
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "command": "python -m bench.load " + " ".join(args.argv),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine() + f", torch {torch_version()}",
        "bundle": work.summary,
        "client": client,
        "variants": [asdict(v) for v in variants],
        "reference": args.reference,
        "duration": args.duration,
        "slices": args.slices,
    }
    return results, meta


# --- reporting ----------------------------------------------------------------------------
HEADER = ("| variant | workers | scenario | conc. | req/s | p50 ms | p95 ms | p99 ms | errors | "
          "cache hit/miss/err | batch | vs /healthz |")  # fmt: skip


def row(r: Result, ratio: float | None = None) -> str:
    vs = f"{ratio:.0%}" if ratio is not None else ""
    return (f"| {r.variant} | {r.workers} | {r.scenario} | {r.concurrency} | {r.rps:,.0f} | "
            f"{r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.p99_ms:.2f} | {r.errors + r.non2xx} | "
            f"{r.cache_hits}/{r.cache_misses}/{r.cache_errors} | {r.mean_batch or ''} | "
            f"{vs} |")  # fmt: skip


def ceilings(results: list[Result]) -> dict[tuple, Result]:
    """The /healthz row of each (variant, workers, concurrency)."""
    return {(r.variant, r.workers, r.concurrency): r for r in results
            if r.scenario == "healthz"}  # fmt: skip


def round_ratios(r: Result, ceiling: Result) -> list[float]:
    """req/s over /healthz's in each round of slices (the two ran minutes apart at most):
    the spread shows how far the machine's drift moves the ratio."""
    if len(r.round_rps) != len(ceiling.round_rps):
        return []  # results saved before rounds were kept
    return [a / b for a, b in zip(r.round_rps, ceiling.round_rps, strict=True) if b > 0]


def table(results: list[Result], variants: tuple[str, ...] | None = None) -> str:
    base = ceilings(results)
    lines = [HEADER, "|" + "---|" * 12]
    for r in results:
        if variants is None or r.variant in variants:
            ceiling = base.get((r.variant, r.workers, r.concurrency))
            lines.append(row(r, r.rps / ceiling.rps if ceiling else None))
    return "\n".join(lines)


def comparison(results: list[Result]) -> str:
    """req/s and p99 of each variant side by side (paired runs)."""
    names = list(dict.fromkeys(r.variant for r in results if r.variant != REFERENCE))
    if len(names) < 2:
        return ""
    by_key = {(r.variant, r.workers, r.scenario, r.concurrency): r for r in results}
    head = "| workers | scenario | conc. | " + " | ".join(
        f"{n} req/s (p99 ms)" for n in names) + " |"  # fmt: skip
    lines = [head, "|" + "---|" * (3 + len(names))]
    for r in results:
        if r.variant != names[0]:
            continue
        cells = []
        for n in names:
            other = by_key.get((n, r.workers, r.scenario, r.concurrency))
            cells.append(f"{other.rps:,.0f} ({other.p99_ms:.1f})" if other else "")
        lines.append(f"| {r.workers} | {r.scenario} | {r.concurrency} | " + " | ".join(cells)
                     + " |")  # fmt: skip
    return "\n".join(lines)


def targets(results: list[Result], variant: str = "current") -> list[str]:
    """The issue's targets: p99 <= 15 ms at concurrency 8, zero errors, and (in
    ``reference_lines``) cache hits >= 1.0x and misses >= 0.6x the naive endpoint's req/s
    at concurrency 32. The share of /healthz is printed for reading, not as a target."""
    out = []
    base = ceilings(results)
    for r in (r for r in results if r.variant == variant):
        ceiling = base.get((r.variant, r.workers, r.concurrency))
        if r.concurrency == 32 and ceiling and r.scenario.startswith("recommend"):
            rounds = round_ratios(r, ceiling)
            out.append(f"- {r.workers} worker(s), {r.scenario} at concurrency 32: "
                       f"{r.rps / ceiling.rps:.1%} of /healthz{spread(rounds, '.0%')}")  # fmt: skip
        if r.concurrency == 8 and r.scenario != "healthz":
            out.append(f"- {r.workers} worker(s), {r.scenario} at concurrency 8: p99 "
                       f"{r.p99_ms:.1f} ms (target ≤ 15 ms): "
                       f"{'met' if r.p99_ms <= 15 else 'NOT met'}")  # fmt: skip
    out += reference_lines(results, variant)
    errors = sum(r.errors + r.non2xx for r in results)
    out.append(f"- errors over all runs: {errors} (target 0): {'met' if not errors else 'NOT met'}")
    return out


def spread(rounds: list[float], fmt: str) -> str:
    return f" (rounds: {min(rounds):{fmt}}–{max(rounds):{fmt}})" if rounds else ""


def reference_lines(results: list[Result], variant: str = "current") -> list[str]:
    """/recommend against the naive endpoint (bench.naive) of the same rounds, at
    concurrency 32: the issue's targets are >= 1.0x for cache hits and >= 0.6x for misses."""
    by_key = {(r.variant, r.workers, r.scenario, r.concurrency): r for r in results}
    out = []
    for r in results:
        naive = by_key.get((REFERENCE, r.workers, "naive", r.concurrency))
        if r.variant != variant or r.concurrency != 32 or naive is None:
            continue
        if r.scenario == "healthz":
            ceiling = by_key.get((REFERENCE, r.workers, "healthz", 32))
            if ceiling:
                out.append(f"- {r.workers} worker(s), the naive endpoint at concurrency 32: "
                           f"{naive.rps / ceiling.rps:.1%} of its own /healthz"
                           f"{spread(round_ratios(naive, ceiling), '.0%')} "
                           "(the issue's calibration: about 50 %)")  # fmt: skip
        elif r.scenario.startswith("recommend"):
            ratio = r.rps / naive.rps
            line = (f"- {r.workers} worker(s), {r.scenario} at concurrency 32: {ratio:.2f}× the "
                    f"naive endpoint's req/s{spread(round_ratios(r, naive), '.2f')}")  # fmt: skip
            need = 1.0 if r.scenario == "recommend-hit" else 0.6
            out.append(f"{line} (target ≥ {need:.1f}×): {'met' if ratio >= need else 'NOT met'}")
    return out


def section(results: list[Result], meta: dict, notes: str) -> str:
    variants = meta["variants"]
    described = "; ".join(
        f"`{v['name']}`: " + (", ".join(f"{k}={x}" for k, x in v["env"].items()) or "defaults")
        + (f", service/ from {v['path']}" if v["path"] else "")
        for v in variants
    )  # fmt: skip
    parts = [
        "## Load",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"Bundle: {meta['bundle']}  ",
        f"Load generator: {meta['client']} (1 thread, keep-alive connections = concurrency), "
        "server, Redis and load generator on 127.0.0.1, all on the same 2 cores.  ",
        f"Variants (measured back to back for every row): {described}"
        + ("; `naive-endpoint`: `python -m bench.naive`, the issue's reference endpoint "
           "(mean of 10 item vectors + one flat FAISS search, bare FastAPI)"
           if meta.get("reference") else "") + "  ",
        f"Each row: {meta.get('duration', 20):g} s of load in {meta.get('slices', 1)} slices, "
        "taken in turns with the other scenarios and variants of its concurrency.",
        "",
        "### Current service",
        "",
        table(results, ("current", REFERENCE)),
        "",
        "Targets:",
        "",
        *targets(results),
        "",
    ]  # fmt: skip
    if len(variants) > 1:
        parts += ["### Before / after (paired runs)", "", comparison(results), ""]
    parts += [notes.strip(), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="artifacts/current")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per scenario")
    p.add_argument(
        "--slices",
        type=int,
        default=4,
        help="runs each scenario's duration is cut into, interleaved with the other scenarios",
    )
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--users", type=int, default=500, help="users cycled by recommend-hit")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra service environment (e.g. TRACED_TOWER=false)",
    )
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=K=V,...",
        help="also measure this variant right after each run of the current service: env "
        "overrides and/or path:DIR (another service/ checkout)",
    )
    p.add_argument(
        "--service-path",
        default=None,
        help="directory holding another service/ package to benchmark (e.g. an "
        "older commit's, extracted with git archive)",
    )
    p.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the naive endpoint (bench.naive) measured in the same rounds",
    )
    p.add_argument("--notes", default="", help="markdown appended to the section (or @file)")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="RESULTS.json",
        help="do not run: print and write the section of a saved run",
    )
    p.add_argument("--json", type=Path, default=None, help="results file (default: bench/results)")
    args = p.parse_args(argv)
    args.argv = argv
    args.concurrency = [int(x) for x in str(args.concurrency).split(",")]
    args.workers = [int(x) for x in str(args.workers).split(",")]
    if args.duration <= 0 or args.duration > 300:
        p.error("--duration must be in (0, 300] seconds")
    if not 1 <= args.slices <= args.duration:
        p.error("--slices must be between 1 and --duration (slices of at least 1 s)")
    if max(args.concurrency) > 256:
        p.error("--concurrency is capped at 256")
    if args.render is not None:  # re-render a saved run (e.g. after editing --notes)
        saved = json.loads(args.render.read_text())
        results, meta = [Result(**r) for r in saved["results"]], saved["meta"]
    else:
        print(HEADER, flush=True)
        results, meta = run_all(args)
        out = args.json or RESULTS_DIR / f"load-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]},
                                  indent=2))  # fmt: skip
        print(f"results: {out}")
    print()
    print(table(results))
    if len({r.variant for r in results}) > 1:
        print(comparison(results))
    print("\n".join(targets(results)))
    if not args.no_write:
        notes = args.notes
        if notes.startswith("@"):
            notes = Path(notes[1:]).read_text()
        write_section("Load", section(results, meta, notes))
        print(f"updated the ## Load section of {DOC}")


def torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
