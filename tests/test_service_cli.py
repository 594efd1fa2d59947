"""`python -m service` end to end: the import boundary, `examples`, and `serve` as a real
uvicorn process (2 workers) against a real redis-server."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import httpx
import pytest
import redis_server as redis_helper
import test_service_support as support
from live_service import stop, wait_ready
from test_service_support import ROOT, catalog, serve, settings

anyio_backend, served_root = support.anyio_backend, support.served_root  # fixtures
redis_server = redis_helper.redis_server

TRAINING_ONLY = [
    "training.data",
    "training.train",
    "training.losses",
    "training.baselines",
    "training.split",
    "training.metrics",
    "training.export",
    "training.cli",
]


def run_python(code: str, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_service_imports_no_training_only_module(served_root):
    code = f"""
import json, sys
import service.app
from service.engine import Engine
from service.__main__ import main, example_commands
engine = Engine({str(served_root / "current")!r})
example_commands({str(served_root / "current")!r}, "http://x")
print(json.dumps(sorted(m for m in sys.modules if m.startswith("training"))))
"""
    loaded = json.loads(run_python(code, ARTIFACTS_DIR=str(served_root / "current")))
    forbidden = [m for m in loaded if any(m == t or m.startswith(t + ".") for t in TRAINING_ONLY)]
    assert forbidden == [], loaded
    assert "training.model" in loaded  # the check would see them: the towers were imported


@pytest.mark.anyio
async def test_examples_print_runnable_requests_with_real_ids(served_root):
    cat = catalog(served_root)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "examples",
            "--bundle",
            str(served_root / "current"),
            "--url",
            "http://127.0.0.1:9",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    commands = [shlex.split(line) for line in out.splitlines() if line.startswith("curl")]
    assert len(commands) == 5, out
    assert "# dashboard (open in a browser): http://127.0.0.1:9/ui" in out.splitlines(), out
    item_ids = {it["id"] for it in cat["items"]}
    user_ids = {u["id"] for u in cat["users"]}
    seen_paths = []
    async with serve(settings(served_root)) as (client, _):
        for argv in commands:
            method = argv[argv.index("-X") + 1]
            url = next(a for a in argv if a.startswith("http://127.0.0.1:9"))
            path = url.removeprefix("http://127.0.0.1:9")
            body = json.loads(argv[argv.index("-d") + 1]) if "-d" in argv else None
            r = await client.request(method, path, json=body)
            assert r.status_code == 200, (argv, r.text)
            seen_paths.append(path.split("?")[0].rsplit("/", 1)[0] or path)
            if body and "recent_items" in body:
                assert set(body["recent_items"]) <= item_ids
                assert r.json()["strategy"] == "sequence"
            if body and "features" in body:
                assert body["features"] and r.json()["strategy"] == "features"
                assert r.json()["unknown_features"] == {}
            if body and set(body) == {"user_id", "k"}:
                assert body["user_id"] in user_ids and r.json()["strategy"] == "id"
            if body and "item_id" in body:
                assert body["item_id"] in item_ids
        page = await client.get("/ui")  # the printed dashboard URL serves the page
        assert page.status_code == 200 and "towerrec dashboard" in page.text
    assert "/similar-items" in seen_paths


def listening_sockets(port: int) -> int:
    """LISTEN sockets on 127.0.0.1:``port``, from Linux's /proc/net/tcp."""
    count = 0
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        count += local == f"0100007F:{port:04X}" and state == "0A"
    return count


def test_serve_runs_uvicorn_with_two_workers(served_root, redis_server, tmp_path):
    port = redis_helper.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ARTIFACTS_DIR": str(served_root),  # an artifacts root works too
        "REDIS_URL": redis_server.url,
        "API_KEY": "k",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_ready(url, proc)
        user = next(u["id"] for u in catalog(served_root)["users"] if u["history"])
        headers = {"X-API-Key": "k"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            assert (
                client.post(
                    "/recommend", json={"user_id": user}, headers={"X-API-Key": ""}
                ).status_code
                == 401
            )
            caches = [
                client.post("/recommend", json={"user_id": user}).json()["cache"] for _ in range(6)
            ]
            assert caches[0] == "miss" and set(caches[1:]) == {"hit"}  # shared through Redis
            metrics = client.get("/metrics").text
        hits = sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("towerrec_cache_hits_total")
        )
        assert hits == 5  # aggregated over both workers
        if sys.platform.startswith("linux"):  # one socket per worker: connections spread
            deadline = time.monotonic() + 30
            while listening_sockets(port) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert listening_sockets(port) == 2
    finally:
        stop(proc)


def test_serve_loop_option_reaches_uvicorn(monkeypatch):
    """`--loop` / UVICORN_LOOP pick the event loop; asyncio is the default (measured faster)."""
    from typer.testing import CliRunner

    import service.server
    from service.__main__ import cli

    seen = []
    monkeypatch.setattr(service.server, "run", lambda app, **kw: seen.append(kw["loop"]))
    runner = CliRunner()
    assert runner.invoke(cli, ["serve"]).exit_code == 0
    assert runner.invoke(cli, ["serve", "--loop", "uvloop"]).exit_code == 0
    assert runner.invoke(cli, ["serve"], env={"UVICORN_LOOP": "uvloop"}).exit_code == 0
    assert seen == ["asyncio", "uvloop", "uvloop"]
    bad = runner.invoke(cli, ["serve", "--loop", "nope"])
    assert bad.exit_code == 2 and "asyncio" in bad.output
