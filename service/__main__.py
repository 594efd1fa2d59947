"""``python -m service serve`` / ``python -m service examples`` (console script towerrec-serve)."""

from __future__ import annotations

import os
import shlex
import tempfile
from enum import StrEnum
from pathlib import Path

import typer

cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Serve a towerrec bundle over HTTP (settings: environment variables, "
    "see service/config.py).",
)


class Loop(StrEnum):
    auto = "auto"
    uvloop = "uvloop"
    asyncio = "asyncio"


@cli.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    access_log: bool = typer.Option(False, help="Log every request."),
    worker_healthcheck_s: int = typer.Option(
        120,
        min=1,
        help="With --workers > 1: how long uvicorn's supervisor waits for a worker's "
        "answer before it kills it. A worker loading a big catalog holds the GIL for "
        "seconds at a time (uvicorn's default of 5 s kills it during startup).",
    ),
    loop: Loop = typer.Option(
        Loop.asyncio,
        envvar="UVICORN_LOOP",
        help="Event loop; uvloop measured within a few percent of asyncio (docs/BENCHMARKS.md).",
    ),
) -> None:
    """Run uvicorn on service.app:app."""
    from service.server import run

    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # each worker writes its metrics here; /metrics aggregates them
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="towerrec-metrics-")
    run(
        "service.app:app",
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        loop=loop.value,
        timeout_worker_healthcheck=worker_healthcheck_s,
    )


def _curl(method: str, url: str, body: str | None, api_key: bool) -> str:
    parts = ["curl", "-s", "-X", method, shlex.quote(url)]
    if api_key:
        parts += ["-H", '"X-API-Key: $API_KEY"']
    if body is not None:
        parts += ["-H", shlex.quote("Content-Type: application/json"), "-d", shlex.quote(body)]
    return " ".join(parts)


def example_commands(bundle_dir: str | Path, url: str, api_key: bool = False) -> list[str]:
    """Ready-to-run curl commands with real ids and feature values from the bundle."""
    import json

    from training.bundle import ITEMS, POPULARITY, USERS, load_json

    url = url.rstrip("/")
    items = load_json(bundle_dir, ITEMS)
    users = load_json(bundle_dir, USERS)
    popular = load_json(bundle_dir, POPULARITY) or [it["id"] for it in items]
    user = next((u for u in users if u.get("features")), users[0] if users else None)
    features = {k: v for k, v in (user or {}).get("features", {}).items() if v not in (None, "")}
    recent = [str(i) for i in popular[:3]]
    item_id = str(popular[0]) if popular else str(items[0]["id"])
    out = []

    def add(comment: str, method: str, path: str, body: dict | None = None) -> None:
        out.append(f"# {comment}")
        out.append(_curl(method, url + path, None if body is None else json.dumps(body), api_key))

    add("features only (a new user)", "POST", "/recommend", {"features": features, "k": 5})
    add("recent items only (newest last)", "POST", "/recommend", {"recent_items": recent, "k": 5})
    if user is not None:
        add(
            f"known user {user['id']} (bundle profile + events)",
            "POST",
            "/recommend",
            {"user_id": str(user["id"]), "k": 5},
        )
    add(f"items similar to {item_id}", "GET", f"/similar-items/{item_id}?k=5")
    if user is not None:
        add(
            "record an event; the next /recommend for this user uses it",
            "POST",
            "/events",
            {"user_id": str(user["id"]), "item_id": item_id},
        )
    return out


@cli.command()
def examples(
    bundle: Path = typer.Option(Path("artifacts/current"), help="Bundle, root or `current`."),
    url: str = typer.Option("http://127.0.0.1:8000", help="Where the service listens."),
) -> None:
    """Print the dashboard URL and curl commands for the main endpoints, with real ids
    from the bundle."""
    typer.echo(f"# towerrec examples for {url} (bundle {bundle})")
    typer.echo(f"# dashboard (open in a browser): {url.rstrip('/')}/ui")
    for line in example_commands(bundle, url, api_key=bool(os.environ.get("API_KEY"))):
        typer.echo(line)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
