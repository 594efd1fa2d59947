"""``run``: ``uvicorn.run`` for ``python -m service serve``, with the multi-worker listening
socket fixed so that keep-alive connections get ``TCP_NODELAY``.

With ``--workers N`` uvicorn binds the socket itself with ``proto`` left at 0; accepted
connections inherit it, and asyncio only turns Nagle's algorithm off when ``proto`` is
``IPPROTO_TCP``, so every keep-alive request after the first waited ~40 ms for a delayed
ACK (uvicorn issue #3149; measured here: 23 requests/s per connection). uvloop sets the
option regardless; the single-worker path is unaffected.
"""

from __future__ import annotations

import socket
import sys

import uvicorn
from uvicorn.main import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess


class Config(uvicorn.Config):
    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto != socket.IPPROTO_TCP:
            # the same descriptor, declared as TCP (accepted sockets copy this proto)
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, sock.detach())
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
