"""The harness itself: if the balancer or the PostgreSQL proxy lied, the cluster tests
would prove nothing. Small WSGI apps and an echo server stand in for the broker and the
database (no PostgreSQL needed, under a second)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import requests
from waitress.server import create_server

from tests.scale.cluster import Balancer, TcpProxy
from tests.servers import ServedApp, free_port


def echo_app(name: str) -> Callable[..., Iterable[bytes]]:
    """Answers what it received, with two cookies and a redirect when asked."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        seen = {
            "name": name,
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "query": environ.get("QUERY_STRING", ""),
            "host": environ.get("HTTP_HOST"),
            "forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
            "body": environ["wsgi.input"].read(length).decode(),
        }
        status = "302 Found" if seen["path"] == "/redirect" else "200 OK"
        start_response(
            status,
            [
                ("Content-Type", "application/json"),
                ("Set-Cookie", "a=1; Path=/; HttpOnly"),
                ("Set-Cookie", "b=2; Path=/"),
                ("Location", "http://127.0.0.1:9/elsewhere"),
            ],
        )
        return [json.dumps(seen).encode()]

    return app


def serve_raw(app: Callable[..., Iterable[bytes]]) -> ServedApp:
    """Like tests.servers.serve, but waitress keeps X-Forwarded-For (by default it drops
    proxy headers from untrusted peers, and the test must see what the balancer sent)."""
    server = create_server(app, host="127.0.0.1", port=0, clear_untrusted_proxy_headers=False)
    port = int(server.effective_port)  # type: ignore[union-attr]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return ServedApp(f"http://127.0.0.1:{port}", port, server, thread)


@pytest.fixture
def backends() -> Iterator[list[ServedApp]]:
    served = [serve_raw(echo_app(f"backend-{i}")) for i in range(2)]
    yield served
    for app in served:
        app.stop()


def test_balancer_forwards_faithfully_and_records(backends: list[ServedApp]) -> None:
    balancer = Balancer([app.port for app in backends])
    try:
        balancer.next_backends([1, 0])
        first = requests.post(
            f"{balancer.url}/token?x=1",
            data={"k": "v"},
            headers={"Host": "issuer.example:8443", "X-Forwarded-For": "203.0.113.7"},
            timeout=5,
        )
        second = requests.get(f"{balancer.url}/redirect", allow_redirects=False, timeout=5)
        seen = first.json()
        assert seen["name"] == "backend-1" and seen["method"] == "POST"
        assert seen["host"] == "issuer.example:8443"  # Host unchanged
        assert seen["query"] == "x=1" and seen["body"] == "k=v"
        assert seen["forwarded_for"] == "203.0.113.7, 127.0.0.1"
        assert first.raw.headers.getlist("Set-Cookie") == ["a=1; Path=/; HttpOnly", "b=2; Path=/"]
        assert second.status_code == 302 and second.json()["name"] == "backend-0"
        assert [(h.method, h.path, h.backend) for h in balancer.hops()] == [
            ("POST", "/token?x=1", 1),
            ("GET", "/redirect", 0),
        ]
        with balancer.pinned(1):
            assert requests.get(balancer.url, timeout=5).json()["name"] == "backend-1"
        with pytest.raises(ValueError, match="backend 2"):
            balancer.pin(2)
    finally:
        balancer.close()


def test_balancer_refused_backend_is_502_or_retried(backends: list[ServedApp]) -> None:
    dead = free_port()
    strict = Balancer([dead, backends[0].port])
    lenient = Balancer([dead, backends[0].port], retry_on_refused=True)
    try:
        strict.pin(0)
        assert requests.get(strict.url, timeout=5).status_code == 502
        assert strict.hops()[-1].backend is None and strict.hops()[-1].refused == (0,)
        lenient.pin(0)
        assert requests.get(lenient.url, timeout=5).json()["name"] == "backend-0"
        assert lenient.hops()[-1].backend == 1 and lenient.hops()[-1].refused == (0,)
    finally:
        strict.close()
        lenient.close()


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other side closed or reset the connection (a timeout is not that)."""
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True


def dies_at_once(port: int) -> bool:
    """Whether a new connection is reset: the reset can beat ``connect`` itself
    (EPIPE or ECONNRESET from the handshake) or come with the first read."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except (BrokenPipeError, ConnectionResetError):
        return True
    with sock:
        return closed_by_peer(sock)


def test_tcp_proxy_cut_drops_connections_and_restore_heals() -> None:
    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=pipe, args=(conn,), daemon=True).start()

    def pipe(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    proxy = TcpProxy("127.0.0.1", server.getsockname()[1])
    try:
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        held.sendall(b"ping")
        assert held.recv(16) == b"ping"
        proxy.cut()
        assert held.recv(16) == b""  # the open connection is gone...
        assert dies_at_once(proxy.port)  # ...and new ones die at once
        proxy.restore()
        again = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        again.sendall(b"pong")
        assert again.recv(16) == b"pong"
        for sock in (held, again):
            sock.close()
    finally:
        proxy.close()
        server.close()
