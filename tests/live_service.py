"""The service as a real process: ``python -m service serve`` on a free port, its stderr
(every log line) written to a file the test can read, stopped at the end.

    with live_service(env) as live:  # env: ARTIFACTS_DIR, REDIS_URL, ...
        httpx.get(f"{live.url}/readyz"); live.log()
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Live:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        """Everything the server wrote to stderr so far (its logs)."""
        return self.log_path.read_text(errors="replace")


@contextmanager
def live_service(env: dict[str, str], workers: int = 1, timeout: float = 120) -> Iterator[Live]:
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="towerrec-live-"))
    log_path = log_dir / "stderr.log"
    base = {"RELOAD_POLL_S": "0", "PYTHONPATH": str(ROOT), "LOG_LEVEL": "info"}
    cmd = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as stderr:
        proc = subprocess.Popen(
            [*cmd, "--workers", str(workers)],
            cwd=ROOT,
            env={**os.environ, **base, **env},
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
    live = Live(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_ready(live.url, proc, timeout, live.log)
        yield live
    finally:
        stop(proc)
        shutil.rmtree(log_dir, ignore_errors=True)


def wait_ready(
    url: str, proc: subprocess.Popen, timeout: float = 60, log: Callable[[], str] | None = None
) -> None:
    """Poll /readyz until 200; fail with the server's log tail if it exits or times out."""
    tail = (lambda: log()[-4000:]) if log else (lambda: "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited:\n{tail()}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready in {timeout} s:\n{tail()}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group; SIGKILL it if it has not exited in 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
