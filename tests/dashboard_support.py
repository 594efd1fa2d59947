"""Shared by the dashboard tests: an IVF copy of the session bundle whose recall is below 1,
traffic helpers, and polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import test_service_support as support
from conftest import run_module

# nprobe 1 of 16 lists over the 500-item synthetic catalog: measured recall@10 ~0.7-0.8
IVF_ARGS = ("--kind", "ivf", "--nlist", "16", "--nprobe", "1", "--threads", "1")


def ivf_copy(served_root: Path, dst: Path) -> Path:
    root = support.copy_root(served_root, dst)
    run_module("index", "build", "--bundle", str(root / "current"), *IVF_ARGS)
    return root


def recommend_users(url: str, users: list[str], k: int = 10, key: str | None = None) -> None:
    headers = {"X-API-Key": key} if key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for user in users:
            r = client.post("/recommend", json={"user_id": user, "k": k})
            assert r.status_code == 200, r.text


def wait_for(check: Callable[[], object], timeout: float = 30, every: float = 0.3):
    """``check()``'s first truthy result; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every)
