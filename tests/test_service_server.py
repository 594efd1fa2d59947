"""``service.server``: multi-worker serving keeps TCP_NODELAY on keep-alive connections
(uvicorn binds that socket with proto 0, and asyncio then leaves Nagle's algorithm on)."""

from __future__ import annotations

import asyncio
import socket

from service.server import Config


async def _accepted_nodelay(sock: socket.socket) -> int:
    """TCP_NODELAY of a connection accepted by asyncio on ``sock``, as uvicorn's workers do."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[int] = loop.create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            conn = transport.get_extra_info("socket")
            accepted.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await loop.create_server(Probe, sock=sock)
    port = sock.getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(accepted, 10)
    finally:
        writer.close()
        server.close()


def test_worker_socket_gives_connections_tcp_nodelay():
    fixed = Config("service.app:app", host="127.0.0.1", port=0, workers=2).bind_socket()
    assert fixed.proto == socket.IPPROTO_TCP
    assert asyncio.run(_accepted_nodelay(fixed)) != 0
