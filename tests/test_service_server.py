"""``service.server``: multi-worker serving keeps TCP_NODELAY on keep-alive connections
(uvicorn binds that socket with proto 0, and asyncio then leaves Nagle's algorithm on) and
gives each worker its own listening socket, so connections spread over the workers."""

from __future__ import annotations

import asyncio
import pickle
import socket
import time
from multiprocessing.reduction import ForkingPickler

import pytest

from service.server import REUSE_PORT, Config


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


def _accept_all(listener: socket.socket) -> int:
    listener.setblocking(False)
    accepted = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return accepted
        conn.close()
        accepted += 1


@pytest.mark.skipif(not REUSE_PORT, reason="SO_REUSEPORT load balancing is Linux-only")
def test_each_worker_listens_on_its_own_socket_and_connections_spread():
    """What a worker unpickles (uvicorn spawns workers with the parent's sockets) is a new
    socket on the same address; the kernel spreads connections over the workers' sockets
    and the parent's bound socket, which never listens, receives none."""
    parent = Config("service.app:app", host="127.0.0.1", port=0, workers=2).bind_socket()
    workers = [pickle.loads(ForkingPickler.dumps(parent)) for _ in range(2)]
    assert all(w.getsockname() == parent.getsockname() and w.fileno() != parent.fileno()
               for w in workers)  # fmt: skip
    assert all(w.proto == socket.IPPROTO_TCP for w in workers)
    for w in workers:
        w.listen(64)
    clients = [socket.create_connection(parent.getsockname(), timeout=5) for _ in range(40)]
    try:
        deadline = time.monotonic() + 5
        counts = [0, 0]
        while sum(counts) < len(clients) and time.monotonic() < deadline:
            counts = [c + _accept_all(w) for c, w in zip(counts, workers, strict=True)]
        assert sum(counts) == len(clients)
        assert min(counts) > 0, counts  # all on one socket: 2 in 2**40
        workers[1].close()  # the rest go to workers[0], where asyncio turns Nagle off
        assert asyncio.run(_accepted_nodelay(workers[0])) != 0
    finally:
        for s in [*clients, *workers, parent]:
            s.close()


def test_a_taken_port_fails_fast_with_workers():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(SystemExit):
            Config(
                "service.app:app", host="127.0.0.1", port=taken.getsockname()[1], workers=2
            ).bind_socket()


def test_a_second_server_on_the_same_port_fails_fast():
    first = Config("service.app:app", host="127.0.0.1", port=0, workers=2).bind_socket()
    worker = pickle.loads(ForkingPickler.dumps(first))
    worker.listen(1)
    try:
        second = Config("service.app:app", host="127.0.0.1", port=first.getsockname()[1], workers=2)
        with pytest.raises(SystemExit):
            second.bind_socket()
    finally:
        worker.close()
        first.close()
