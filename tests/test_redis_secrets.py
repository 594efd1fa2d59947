"""The Redis password never leaves the process: not in the log (the server's own stderr, and
pytest's caplog in process), not in /readyz or any other answer, on every Redis failure
path (Redis killed, restarted with another password, a wrong password from the start),
on one redis-server and on a password-protected Redis Cluster. Every URL that is logged
has its credentials redacted, and /readyz shows no address or path to anyone."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator

import httpx
import pytest
import test_service_support as support
from live_service import live_service
from redis_backend import RedisBackend
from redis_cluster import RedisCluster
from redis_server import RedisServer
from test_service_support import catalog, serve, settings

anyio_backend, served_root = support.anyio_backend, support.served_root  # fixtures

PASSWORD = "s3cret-Pa55-for-tests"
WRONG = "not-the-Pa55word"
URL_WITH_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://([^/@\s]*)@", re.I)


def assert_clean(text: str, where: str) -> None:
    for secret in (PASSWORD, WRONG):
        assert secret not in text, f"{where} holds a Redis password:\n{text[-3000:]}"
    for credentials in URL_WITH_CREDENTIALS.findall(text):
        assert set(credentials) <= {"*", ":"}, f"{where}: unredacted URL credentials"


def assert_no_location(body: str, *locations: str) -> None:
    for location in locations:
        assert location not in body, f"/readyz shows {location!r}: {body}"


def redis_failure_logged(text: str) -> bool:
    return any("redis" in line.lower() for line in text.splitlines())


def test_a_live_server_never_logs_or_answers_the_password(served_root):
    """The real process (uvicorn, LOG_LEVEL=debug): its whole stderr is checked."""
    with RedisServer(extra_args=["--requirepass", PASSWORD]) as redis:
        bundle_dir = str(served_root / "current")
        env = {
            "ARTIFACTS_DIR": bundle_dir,
            "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0",
            "API_KEY": "key",
            "LOG_LEVEL": "debug",
            "REDIS_LOG_INTERVAL_S": "0",  # log every failure
            "REDIS_RETRY_S": "0.2",
        }
        user = next(u["id"] for u in catalog(served_root)["users"] if u["history"])
        item = catalog(served_root)["items"][0]["id"]
        with live_service(env) as live, httpx.Client(base_url=live.url, timeout=30) as client:
            key = {"X-API-Key": "key"}
            answers = []

            def exercise() -> None:
                event = {"user_id": user, "item_id": item}
                for _ in range(3):
                    answers.append(client.post("/recommend", json={"user_id": user}, headers=key))
                    answers.append(client.post("/events", json=event, headers=key))
                    answers.append(client.get("/readyz"))
                    answers.append(client.get("/metrics", headers=key))
                    answers.append(client.post("/recommend", json={"user_id": user}))  # 401
                    time.sleep(0.25)

            exercise()
            assert answers[0].status_code == 200 and answers[0].json()["cache"] == "miss"
            redis.kill()  # Redis gone
            exercise()
            assert answers[-5].status_code == 200  # /recommend still answers
            redis.extra_args = ["--requirepass", WRONG]  # back, with another password
            redis.start()
            exercise()
            log = live.log()

    assert redis_failure_logged(log), log[-3000:]
    assert_clean(log, "the server's stderr")
    for r in answers:
        assert_clean(r.text + str(r.headers), f"{r.request.method} {r.request.url.path}")
        if r.request.url.path == "/readyz":
            assert r.status_code == 200, r.text  # Redis is optional: still ready
            assert_no_location(r.text, "127.0.0.1", str(redis.port), bundle_dir, "redis://")


@pytest.fixture(params=["single", "cluster"])
def protected(request) -> Iterator[RedisBackend]:
    """A password-protected redis-server, or a password-protected 3-master cluster."""
    if request.param == "cluster":
        with RedisCluster(password=PASSWORD) as cluster:
            yield RedisBackend(cluster, PASSWORD)
    else:
        with RedisServer(extra_args=["--requirepass", PASSWORD]) as server:
            yield RedisBackend(server, PASSWORD)


@pytest.mark.anyio
async def test_caplog_never_sees_the_password_on_any_failure_path(served_root, protected, caplog):
    caplog.set_level(logging.DEBUG)
    cat = catalog(served_root)
    user, item = cat["users"][0]["id"], cat["items"][0]["id"]
    base = {**protected.settings, "redis_log_interval_s": 0, "redis_retry_s": 0.1}
    bodies: list[str] = []

    async def exercise(client) -> None:
        for _ in range(3):
            for r in (
                await client.post("/recommend", json={"user_id": user}),
                await client.post("/events", json={"user_id": user, "item_id": item}),
                await client.get("/readyz"),
                await client.post("/events", content=b"\xff", headers={"content-type": "x"}),
            ):
                assert r.status_code < 500 or r.status_code == 503, r.text  # 503: /events
                bodies.append(r.text)
            await asyncio.sleep(0.15)

    async with serve(settings(served_root, **base, log_level="debug")) as (client, _):
        await exercise(client)  # all well
        protected.kill()
        await exercise(client)  # Redis away
    wrong = {**base, "redis_url": protected.url.replace(PASSWORD, WRONG)}
    protected.start()
    async with serve(settings(served_root, **wrong, log_level="debug")) as (client, _):
        await exercise(client)  # a wrong password from the start

    text = caplog.text + "\n".join(
        str(record.args) + str(record.exc_info) for record in caplog.records
    )
    assert redis_failure_logged(caplog.text), caplog.text[-3000:]
    assert_clean(text, "caplog")
    for body in bodies:
        assert_clean(body, "an answer")
