"""One interface over the two Redis deployments the service supports, so a test written
once runs on both (the ``redis_backend`` fixture in conftest.py is parametrised over them):

- ``single``: one redis-server (``redis_server.RedisServer``)
- ``cluster``: a 3-master Redis Cluster (``redis_cluster.RedisCluster``)

A test reads ``backend.settings`` (the ``Settings`` fields that point the service at it),
``backend.env`` (the same as environment variables for a subprocess), ``backend.client()``
and ``backend.keys()`` for assertions, and ``kill`` / ``start`` / ``pause`` / ``resume`` /
``kill_node_of`` to break it.
"""

from __future__ import annotations

from redis_cluster import RedisCluster
from redis_server import RedisServer

# How the service is told to use its cluster client (service/config.py, issue 16).
CLUSTER_SETTING = "redis_cluster"


class RedisBackend:
    def __init__(self, target: RedisServer | RedisCluster, password: str | None = None):
        self.target = target
        self.password = password
        self.kind = "cluster" if isinstance(target, RedisCluster) else "single"

    def __repr__(self) -> str:
        return f"RedisBackend({self.kind})"

    @property
    def url(self) -> str:
        if self.kind == "cluster":
            return self.target.url
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.target.port}/0"

    @property
    def settings(self) -> dict:
        """Keyword arguments for ``service.config.Settings``."""
        extra = {CLUSTER_SETTING: True} if self.kind == "cluster" else {}
        return {"redis_url": self.url, **extra}

    @property
    def env(self) -> dict[str, str]:
        """The same as environment variables (``python -m service serve``)."""
        return {k.upper(): str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in self.settings.items()}  # fmt: skip

    def client(self):
        """A sync redis-py client (the cluster client on a cluster) for assertions."""
        if self.kind == "cluster":
            return self.target.client()
        import redis

        return redis.Redis(port=self.target.port, password=self.password)

    def keys(self, pattern: str = "*") -> list[bytes]:
        """Every key matching ``pattern`` on every running node."""
        if self.kind == "cluster":
            return self.target.keys(pattern)
        db = self.client()
        try:
            return db.keys(pattern)
        finally:
            db.close()

    def nodes(self) -> list[RedisServer]:
        return self.target.nodes if self.kind == "cluster" else [self.target]

    def kill(self) -> None:
        """All of Redis gone (every node)."""
        for node in self.nodes():
            node.kill()

    def start(self) -> None:
        """Back after ``kill`` (empty: persistence is off)."""
        if self.kind == "cluster":
            for node in self.target.nodes:
                node.start()
            self.target.wait_ok()
        else:
            self.target.start()

    def pause(self) -> None:
        """SIGSTOP every node: connections hang (a slow or stuck Redis)."""
        for node in self.nodes():
            node.pause()

    def resume(self) -> None:
        for node in self.nodes():
            node.resume()

    def kill_node_of(self, key: str) -> None:
        """Kill the node serving ``key`` (on a single server: the server)."""
        if self.kind == "cluster":
            self.target.kill(self.target.node_of(key))
        else:
            self.target.kill()
