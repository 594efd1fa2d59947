"""Large-catalog benchmark: ``python -m bench.big_catalog --bundle <ML-100K bundle>``.

Builds (once; ``--reuse`` keeps it) a copy of the bundle whose catalog has ``--items`` more
items (default one million), added as ``python -m index add`` adds them: each new item gets
the item tower's vector for its features alone (genres and year drawn from the real
catalog's distribution), then the index is rebuilt as IVF with its automatic nlist for the
grown catalog (``index.updates.compact(spec=IndexSpec("ivf"))``). Then, with Redis and
``python -m service serve --workers 2`` on it:

- **startup**: seconds from spawning the server to ``/readyz`` 200, to the first 200 of
  ``/recommend``, and until both workers logged "Application startup complete";
- **memory per worker**: RSS, PSS (shared pages split between the processes that map them)
  and private anonymous memory from ``/proc/<pid>/smaps_rollup``, after load; paired with
  ``INDEX_MMAP=false`` (the index read into each worker instead of mapped);
- **latency and errors**: ``python -m bench.load`` on the big bundle (2 workers), its
  table and targets.

Results: a table on stdout, JSON under bench/results/, and the ``## Large catalog``
section of docs/BENCHMARKS.md (``--no-write`` to skip). Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench._common import machine, write_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
HEADING = "Large catalog"
CHUNK = 50_000  # items per item-tower call


# --- the bundle ---------------------------------------------------------------------------
def new_items(catalog: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` items whose features are those of random real items, genres reshuffled: a
    new item gets between one and three genres drawn with the catalog's genre frequencies
    and the year of another random item."""
    rng = random.Random(seed)
    genres = [g for it in catalog for g in it.get("features", {}).get("genres", [])]
    out = []
    for i in range(n):
        features = dict(rng.choice(catalog).get("features", {}))
        if genres:
            features["genres"] = sorted({rng.choice(genres) for _ in range(rng.randint(1, 3))})
        title = f"Added item {i}"
        out.append({"id": f"big-{i}", "title": title, "features": features})
    return out


def build(source: Path, out: Path, n_items: int, seed: int = 0) -> Path:
    """Copy ``source``'s current bundle to ``out`` and grow its catalog by ``n_items``."""
    import numpy as np
    from tqdm import tqdm

    from index import IndexSpec, build_index, embed, updates
    from training.bundle import ITEMS, load_json, point_current, read_manifest, resolve

    src = resolve(source)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(src, out / src.name, ignore=shutil.ignore_patterns("index"))
    point_current(out, src.name)
    bundle = out / src.name
    build_index(bundle, "flat")  # the catalog as trained; rebuilt as IVF below
    items = new_items(load_json(bundle, ITEMS), n_items, seed)
    started = time.perf_counter()
    chunks = []
    for start in tqdm(range(0, n_items, CHUNK), desc="item tower", unit="chunk"):
        features = [it["features"] for it in items[start : start + CHUNK]]
        chunks.append(embed.item_vectors(bundle, features))
    vectors = np.concatenate(chunks)
    tower_s = time.perf_counter() - started
    started = time.perf_counter()
    updates.add_items(bundle, items, vectors)
    add_s = time.perf_counter() - started
    started = time.perf_counter()
    section = updates.compact(bundle, progress=True, spec=IndexSpec("ivf"))
    ivf_s = time.perf_counter() - started
    info = {
        "items": section["items"],
        "added": n_items,
        "kind": f"ivf nlist={section['params']['nlist']} nprobe={section['params']['nprobe']}",
        "faiss_bytes": section["files"]["index.faiss"]["bytes"],
        "vectors_bytes": section["files"]["vectors.npy"]["bytes"],
        "items_json_bytes": section["files"]["items.json"]["bytes"],
        "distinct_vectors": int(len(np.unique(vectors.round(5), axis=0))),
        "seconds": {"tower": round(tower_s, 1), "add": round(add_s, 1), "ivf": round(ivf_s, 1)},
        "source": str(src),
        "version": read_manifest(bundle)["version"],
    }
    (out / "big_catalog.json").write_text(json.dumps(info, indent=2))
    return out


# --- startup and memory -------------------------------------------------------------------
def memory(pid: int) -> dict[str, int]:
    """MiB of RSS, PSS and private anonymous pages of one process."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return {
        "rss": round(fields["Rss"] / 1024),
        "pss": round(fields["Pss"] / 1024),
        "anon": round(fields["Anonymous"] / 1024),
        "file": round((fields["Rss"] - fields["Anonymous"]) / 1024),
    }


def workers_of(pid: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing spawn children, not its resource
    tracker) of the server ``pid``."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(child))
    return found


class Launch:
    """One ``python -m service serve --workers N`` on a free port, its stderr collected."""

    def __init__(self, bundle: Path, redis_url: str, env: dict[str, str], workers: int):
        from bench.load import free_port

        self.workers = workers
        self.url = f"http://127.0.0.1:{free_port()}"
        self.metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-")
        full_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "ARTIFACTS_DIR": str(bundle),
            "REDIS_URL": redis_url,
            "RELOAD_POLL_S": "0",
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            **env,
        }
        full_env.pop("API_KEY", None)
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port",
             self.url.rsplit(":", 1)[1], "--workers", str(workers), "--log-level", "info"],
            cwd=ROOT, env=full_env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait(self, timeout: float) -> dict:
        """Seconds from spawning to /readyz 200 and to the first /recommend 200; an
        ``error`` instead when the server exits, its workers keep dying, or time runs out."""
        import httpx

        out: dict = {}
        deadline = self.spawned + timeout
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while "first_recommend_s" not in out:
                died = sum("died" in line for line in self.lines)
                if self.proc.poll() is not None or died >= 2 * self.workers:
                    return {"error": f"workers died {died} times before serving", "log": self.log()}
                if time.monotonic() > deadline:
                    return {"error": f"not serving after {timeout:.0f} s", "log": self.log()}
                try:
                    if "ready_s" not in out and client.get("/readyz").status_code == 200:
                        out["ready_s"] = round(time.monotonic() - self.spawned, 1)
                    r = client.post("/recommend", json={"user_id": "1", "k": 10})
                    if r.status_code == 200:
                        out["first_recommend_s"] = round(time.monotonic() - self.spawned, 1)
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        return out

    def requests(self, n: int = 200) -> int:
        """``n`` /recommend calls, each on a new connection (so every worker answers some);
        returns how many were not 200."""
        import httpx

        errors = 0
        for i in range(n):
            with httpx.Client(base_url=self.url, timeout=60) as fresh:
                r = fresh.post("/recommend", json={"user_id": str(1 + i % 900), "k": 10})
                errors += r.status_code != 200
        return errors

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.workers == 1 else workers_of(self.proc.pid)

    def log(self) -> str:
        return "".join(self.lines[-12:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


def startup(
    bundle: Path,
    redis_url: str,
    env: dict[str, str],
    servers: tuple[int, ...] = (2,),
    timeout: float = 300,
) -> dict:
    """Spawn one server per entry of ``servers`` (its worker count) at once; time each to
    serving, then measure every worker's memory after 200 requests per server."""
    launches = [Launch(bundle, redis_url, env, workers) for workers in servers]
    try:
        waits = [launch.wait(timeout) for launch in launches]
        failed = next((w for w in waits if "error" in w), None)
        if failed:
            return failed
        errors = sum(launch.requests() for launch in launches)
        return {
            "ready_s": max(w["ready_s"] for w in waits),
            "first_recommend_s": max(w["first_recommend_s"] for w in waits),
            "errors_of_200": errors,
            "requests": 200 * len(launches),
            "workers": [memory(pid) for launch in launches for pid in launch.pids()],
        }
    finally:
        for launch in launches:
            launch.stop()


# --- the report ---------------------------------------------------------------------------
SETUPS = {  # name: (server worker counts, INDEX_MMAP)
    "1 server, 1 worker, mmap": ((1,), "true"),
    "1 server, 2 workers, mmap": ((2,), "true"),
    "2 servers of 1 worker, mmap": ((1, 1), "true"),
    "2 servers of 1 worker, no mmap": ((1, 1), "false"),
}


def startup_table(runs: dict[str, dict]) -> str:
    lines = [
        "| setup | /readyz 200 | first /recommend 200 | RSS per worker | PSS per worker | "
        "private (anon) per worker | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def per(r: dict, key: str) -> str:
        return " / ".join(f"{w[key]:,}" for w in r["workers"])

    for name, r in runs.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['ready_s']} s | {r['first_recommend_s']} s | {per(r, 'rss')} MiB | "
            f"{per(r, 'pss')} MiB | {per(r, 'anon')} MiB | {r['errors_of_200']} of "
            f"{r['requests']} |"
        )
    return "\n".join(lines)


def section(
    info: dict, runs: dict[str, dict], load_text: str, command: str, load_workers: str
) -> str:
    mib = 1024 * 1024
    return "\n".join(
        [
            f"## {HEADING}",
            "",
            f"Command: `{command}`  ",
            f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
            f"Machine: {machine()}  ",
            f"Catalog: the ML-100K bundle `{info['version']}` plus {info['added']:,} items "
            f"added through the item tower (features alone: genres and year drawn from the "
            f"real catalog, so only {info['distinct_vectors']:,} distinct vectors), "
            f"{info['items']:,} items, {info['kind']}: index.faiss "
            f"{info['faiss_bytes'] / mib:,.0f} MiB, vectors.npy "
            f"{info['vectors_bytes'] / mib:,.0f} MiB, items.json "
            f"{info['items_json_bytes'] / mib:,.0f} MiB. Built in "
            f"{info['seconds']['tower']} s (tower) + {info['seconds']['add']} s (add) + "
            f"{info['seconds']['ivf']} s (IVF k-means and adds).",
            "",
            "### Startup and memory",
            "",
            "Seconds from spawning `python -m service serve --workers N` (the servers of a "
            "setup started together, on the same 2 cores) to the first 200 of /readyz and "
            "/recommend; memory from `/proc/<worker>/smaps_rollup` after 200 requests per "
            "server. PSS splits each shared page between the processes mapping it; *private* "
            "is anonymous memory, which no other process can share. Two 1-worker servers map "
            "the same files exactly as two workers of one server do (the page cache is shared "
            "by every process mapping a file).",
            "",
            startup_table(runs),
            "",
            f"### Latency and errors (bench.load, {load_workers} worker(s))",
            "",
            load_text.strip(),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m bench.big_catalog", description=__doc__.split("\n")[0]
    )
    p.add_argument("--bundle", type=Path, required=True, help="the ML-100K bundle (or its root)")
    p.add_argument("--items", type=int, default=1_000_000, help="items to add")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "towerrec-big")
    p.add_argument("--reuse", action="store_true", help="keep a bundle --out already holds")
    p.add_argument("--duration", type=float, default=10.0, help="bench.load seconds per scenario")
    p.add_argument("--concurrency", default="8,32", help="bench.load concurrencies")
    p.add_argument("--load-workers", default="2", help="bench.load worker counts")
    p.add_argument("--no-load", action="store_true", help="skip the bench.load part")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    if not 1 <= args.items <= 5_000_000:
        p.error("--items must be in [1, 5000000]")

    info_file = args.out / "big_catalog.json"
    if not (args.reuse and info_file.is_file()):
        build(args.bundle, args.out, args.items)
    info = json.loads(info_file.read_text())
    bundle = args.out / "current"
    print(json.dumps(info, indent=2), flush=True)

    from bench.load import Redis

    redis = Redis()
    try:
        runs = {}
        for name, (servers, mmap) in SETUPS.items():
            redis.flush()
            runs[name] = startup(bundle, redis.url, {"INDEX_MMAP": mmap}, servers)
            print(name, json.dumps(runs[name]), flush=True)
    finally:
        redis.stop()
    print(startup_table(runs), flush=True)

    load_text = "(skipped: --no-load)"
    if not args.no_load:
        results = RESULTS_DIR / f"big-load-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
        # bench.load gives a server 120 s to become ready; a 1M-item worker can need more
        ready_timeout = "import bench.load as b; b.wait_http.__defaults__ = (900,); b.main()"
        load = subprocess.run(
            [sys.executable, "-c", ready_timeout, "--bundle", str(bundle),
             "--workers", args.load_workers, "--concurrency", args.concurrency,
             "--duration", str(args.duration), "--no-write", "--json", str(results)],
            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        print(load.stdout[-6000:], load.stderr[-3000:], flush=True)
        if load.returncode != 0:
            raise SystemExit(f"bench.load failed ({load.returncode})")
        tail = load.stdout.split("results: ", 1)[-1].split("\n", 1)[-1]
        load_text = re.sub(r"\n{3,}", "\n\n", tail)
    out = RESULTS_DIR / f"big-catalog-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"catalog": info, "startup": runs}, indent=2))
    command = "python -m bench.big_catalog " + " ".join(argv)
    if not args.no_write:
        write_section(HEADING, section(info, runs, load_text, command, args.load_workers))
        print(f"updated the ## {HEADING} section of docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
