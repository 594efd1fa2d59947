"""A real 3-master Redis Cluster for tests, from Debian's redis-server and redis-cli.

    from redis_cluster import RedisCluster, redis_cluster  # the fixture

Three ``redis-server --cluster-enabled yes`` processes on free loopback ports (each in its
own temp dir), joined by ``redis-cli --cluster create ... --cluster-replicas 0``; ready when
every node reports ``cluster_state:ok``. ``kill(i)`` takes one master away mid-test (its
slots have no replica: keys there fail until ``restart(i)``), ``pause(i)`` hangs it.
Starting one takes about a second.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
BUS_OFFSET = 10000  # a cluster node also listens on port + 10000 (the cluster bus)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(n: int) -> list[int]:
    """``n`` ports whose bus ports (+10000) are free too; outside the ephemeral range so
    that neither collides with a client socket's local port."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randint(20000, 30000)
        if port not in ports and _port_free(port) and _port_free(port + BUS_OFFSET):
            ports.append(port)
    return ports


class RedisCluster:
    def __init__(
        self,
        masters: int = 3,
        password: str | None = None,
        node_timeout_ms: int = 1000,
        extra_args: list[str] | None = None,
    ):
        self.password = password
        self.workdir = Path(tempfile.mkdtemp(prefix="redis-cluster-test-"))
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
            *auth,
            *(extra_args or []),
        ]
        self.nodes = []
        for i, port in enumerate(free_cluster_ports(masters)):
            (self.workdir / str(i)).mkdir()
            self.nodes.append(RedisServer(port, self.workdir / str(i), extra_args=args))

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """A seed node's URL (the cluster client discovers the others from it)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.ports[0]}/0"

    def _cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        return subprocess.run(
            [REDIS_CLI, *auth, *args], capture_output=True, text=True, timeout=timeout
        )

    def start(self, timeout: float = 30.0) -> RedisCluster:
        for node in self.nodes:
            node.start()
        created = self._cli(
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in self.ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        )
        if created.returncode != 0:
            self.close()
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
            )
        self.wait_ok(timeout)
        return self

    def state(self, i: int) -> str:
        info = self._cli("-p", str(self.ports[i]), "cluster", "info", timeout=5).stdout
        for line in info.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return "unknown"

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says ``cluster_state:ok`` (all 16384 slots served)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [i for i, n in enumerate(self.nodes) if n.proc is not None]
            if all(self.state(i) == "ok" for i in running):
                return
            time.sleep(0.05)
        states = {p: self.state(i) for i, p in enumerate(self.ports)}
        raise RuntimeError(f"Redis Cluster not ok after {timeout} s: {states}")

    def node_of(self, key: str | bytes) -> int:
        """Index of the node serving ``key``'s slot."""
        client = self.client()
        try:
            slot = client.keyslot(key)
            host, port = client.nodes_manager.get_node_from_slot(slot).name.rsplit(":", 1)
        finally:
            client.close()
        return self.ports.index(int(port))

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (an outage: its slots are unserved, no replica takes over)."""
        self.nodes[i].kill()

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` again on its port and dir: it rejoins from its nodes.conf with
        its slots (and no data, persistence is off)."""
        self.nodes[i].start()
        self.wait_ok(timeout)

    def pause(self, i: int) -> None:
        self.nodes[i].pause()

    def resume(self, i: int) -> None:
        self.nodes[i].resume()

    def client(self):
        """A redis-py cluster client (sync) for assertions."""
        import redis.cluster

        return redis.cluster.RedisCluster(
            host="127.0.0.1", port=self.ports[0], password=self.password
        )

    def keys(self, pattern: str = "*") -> list[bytes]:
        """Every key on every running node (``KEYS`` is per node in a cluster)."""
        import redis

        found: list[bytes] = []
        for node in self.nodes:
            if node.proc is not None:
                db = redis.Redis(port=node.port, password=self.password)
                found += db.keys(pattern)
                db.close()
        return found

    def flushall(self) -> None:
        import redis

        for node in self.nodes:
            if node.proc is not None:
                redis.Redis(port=node.port, password=self.password).flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[RedisCluster]:
    """One cluster for the session (tests flush it; see ``redis_cluster``)."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_session) -> Iterator[RedisCluster]:
    """The session's cluster, emptied, every node running and ``cluster_state:ok``."""
    cluster = redis_cluster_session
    for node in cluster.nodes:  # every node first: one alone cannot be ok
        if node.proc is None:
            node.start()
        else:
            node.resume()
    cluster.wait_ok()
    cluster.flushall()
    yield cluster
