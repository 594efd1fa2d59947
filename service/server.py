"""``run``: ``uvicorn.run`` for ``python -m service serve``, with the multi-worker listening
socket fixed in two ways.

1. **TCP_NODELAY.** With ``--workers N`` uvicorn binds the socket itself with ``proto``
   left at 0; accepted connections inherit it, and asyncio only turns Nagle's algorithm off
   when ``proto`` is ``IPPROTO_TCP``, so every keep-alive request after the first waited
   ~40 ms for a delayed ACK (uvicorn issue #3149; measured here: 23 requests/s per
   connection). uvloop sets the option regardless; the single-worker path is unaffected.
2. **One listening socket per worker (Linux, SO_REUSEPORT).** uvicorn hands every worker
   the same socket, and the worker that wakes first accepts every connection waiting in
   its queue. Clients that open their keep-alive connections together (a load balancer's
   pool, a load generator) then often all land on one worker: measured under wrk at
   concurrency 32, "2 workers" served cache hits with 0.99 cores of CPU between them. Here
   each worker listens on its own socket bound to the same address, and the kernel spreads
   new connections over them by a hash of the client's address and port. The parent's
   socket is bound without SO_REUSEPORT and never listens: it receives no connections,
   and a second server started on the same port still fails with "address in use". A
   worker that is restarted binds a new socket.
"""

from __future__ import annotations

import socket
import sys

import uvicorn
from uvicorn.main import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _bind_worker_socket(family: int, address: tuple) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class PerWorkerListener(socket.socket):
    """The parent's bound socket; what a worker unpickles is a new socket of its own bound
    to the same address (uvicorn spawns each worker with the parent's sockets)."""

    def __reduce__(self):
        return _bind_worker_socket, (self.family, self.getsockname())


class Config(uvicorn.Config):
    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return sock
        per_worker = self.workers > 1 and REUSE_PORT
        # the same descriptor, declared as TCP (accepted sockets copy this proto)
        sock_class = PerWorkerListener if per_worker else socket.socket
        sock = sock_class(sock.family, sock.type, socket.IPPROTO_TCP, sock.detach())
        sock.set_inheritable(True)
        return sock


def run(app: str, **kwargs) -> None:
    config = Config(app, **kwargs)
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
