"""Deployment without Docker: the compose file's own trainer and api commands run locally
against a password-protected redis-server, and two API replicas share one Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis_server as redis_helper
import yaml
from live_service import stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
redis_server = redis_helper.redis_server  # fixture


def compose_command(service: str, artifacts: Path) -> list[str]:
    """The service's compose command, run locally: `python` is this interpreter and the
    `/artifacts` volume is a temporary directory."""
    cmd = [str(artifacts) if arg == "/artifacts" else arg for arg in SERVICES[service]["command"]]
    assert cmd[0] == "python"
    return [sys.executable, *cmd[1:]]


def compose_env(service: str, replacements: dict[str, str]) -> dict[str, str]:
    """The service's compose environment with ${VAR:-default} expanded and hosts replaced."""
    env = {}
    for key, value in SERVICES[service].get("environment", {}).items():
        value = str(value).replace("${REDIS_PASSWORD:-towerrec-local}", "pw-for-test")
        value = value.replace("${API_KEY:-}", "").replace("${ADMIN_API_KEY:-}", "")
        for old, new in replacements.items():
            value = value.replace(old, new)
        env[key] = value
    return env


@contextmanager
def api_process(cmd: list[str], env: dict[str, str], port: int):
    """Start `cmd` (a `python -m service serve ...` command) on 127.0.0.1:port."""
    cmd = list(cmd)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(port)
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **env},
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=120)
        yield httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    finally:
        stop(proc)


def test_compose_trainer_and_api_commands_work_against_real_redis(tmp_path):
    artifacts = tmp_path / "artifacts"
    trainer = subprocess.run(
        compose_command("trainer", artifacts),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "HOME": str(tmp_path / "home")},
    )
    assert trainer.returncode == 0, trainer.stderr[-4000:]
    offline = "FALLING BACK to the synthetic dataset" in trainer.stderr
    assert offline or "loaded ml-100k" in trainer.stderr
    assert (artifacts / "current" / "index").is_dir()

    with redis_helper.RedisServer(extra_args=["--requirepass", "pw-for-test"]) as redis:
        port = redis_helper.free_port()
        env = compose_env(
            "api", {"/artifacts": str(artifacts), "@redis:6379": f"@127.0.0.1:{redis.port}"}
        )
        with api_process(compose_command("api", artifacts), env, port) as api:
            assert api.get("/readyz").status_code == 200
            first = api.post("/recommend", json={"user_id": "1", "k": 5})
            again = api.post("/recommend", json={"user_id": "1", "k": 5})
            assert first.status_code == again.status_code == 200
            assert len(first.json()["items"]) == 5
            assert (first.json()["cache"], again.json()["cache"]) == ("miss", "hit")
            item = first.json()["items"][0]["item_id"]
            similar = api.get(f"/similar-items/{item}", params={"k": 5})
            assert similar.status_code == 200
            assert item not in [i["item_id"] for i in similar.json()["items"]]


def test_two_replicas_share_events_and_cached_vectors(bundle_root, redis_server):
    env = {
        "ARTIFACTS_DIR": str(bundle_root / "current"),
        "REDIS_URL": redis_server.url,
        "RELOAD_POLL_S": "0",
    }
    cmd = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", "0"]
    port_a, port_b = redis_helper.free_port(), redis_helper.free_port()
    with api_process(cmd, env, port_a) as a, api_process(cmd, env, port_b) as b:
        body = {"user_id": "7", "k": 10}
        from_a = a.post("/recommend", json=body).json()
        from_b = b.post("/recommend", json=body).json()
        assert from_a["cache"] == "miss" and from_b["cache"] == "hit"  # A's vector, read by B
        assert from_a["items"] == from_b["items"]

        new_item = from_a["items"][0]["item_id"]
        assert a.post("/events", json={"user_id": "7", "item_id": new_item}).status_code == 200
        after = b.post("/recommend", json=body).json()
        assert after["cache"] == "miss"  # A's event invalidated the vector B would have used
        assert new_item not in [i["item_id"] for i in after["items"]]  # now seen: excluded
        assert after["items"] != from_b["items"]
        assert redis_server.client().keys("*7*"), "history and vector live in the shared Redis"
