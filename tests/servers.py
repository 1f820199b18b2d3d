"""Run WSGI apps as real HTTP servers on 127.0.0.1 for integration tests.

A served app listens on an ephemeral port in a daemon thread, using the same
production server (waitress) that ``qq-oidc-broker serve`` uses, so tests talk
real HTTP with real sockets, headers and keep-alive.
"""

from __future__ import annotations

import datetime
import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from waitress.server import create_server


@dataclass
class ServedApp:
    """A WSGI app listening on 127.0.0.1; ``url`` has no trailing slash."""

    url: str
    port: int
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        """Stop without racing the server's select() loop.

        Closing sockets while the thread sits in select() can kill it with
        EBADF; emptying the socket map and waking the loop lets it leave first.
        """
        socket_map = self.server._map
        channels = list(socket_map.values())
        socket_map.clear()
        self.server.trigger.pull_trigger()
        self.thread.join(timeout=5)
        for channel in channels:
            if channel is not self.server and channel is not self.server.trigger:
                channel.close()
        self.server.close()


def serve(app: Any, port: int = 0, threads: int = 32) -> ServedApp:
    """Start ``app`` on 127.0.0.1:``port`` (0 picks a free port) in a thread."""
    server = create_server(app, host="127.0.0.1", port=port, threads=threads)
    bound = server.effective_port  # type: ignore[union-attr]
    thread = threading.Thread(target=server.run, daemon=True, name=f"serve-{bound}")
    thread.start()
    return ServedApp(url=f"http://127.0.0.1:{bound}", port=int(bound), server=server, thread=thread)


@contextmanager
def serving(app: Any, port: int = 0) -> Iterator[ServedApp]:
    """Context manager form of :func:`serve`."""
    served = serve(app, port)
    try:
        yield served
    finally:
        served.stop()


def free_port() -> int:
    """A port that was free a moment ago (for apps whose URL must be known before they start)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Emulator:
    """Test handle on a running QQ emulator: control, request log, users."""

    served: ServedApp
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return self.served.url

    def control(self, **settings: Any) -> dict[str, Any]:
        """Merge ``settings`` into the emulator's control state; returns the new state."""
        response = self.http.post(f"{self.url}/_emulator/control", json=settings, timeout=5)
        response.raise_for_status()
        merged: dict[str, Any] = response.json()
        return merged

    def reset(self) -> None:
        self.http.post(f"{self.url}/_emulator/reset", timeout=5).raise_for_status()

    def clear_requests(self) -> None:
        self.http.delete(f"{self.url}/_emulator/requests", timeout=5).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        logged: list[dict[str, Any]] = self.http.get(
            f"{self.url}/_emulator/requests", timeout=5
        ).json()
        return logged

    def user(self, user_id: str) -> dict[str, Any]:
        users = self.http.get(f"{self.url}/_emulator/users", timeout=5).json()
        listed = users["users"] if isinstance(users, dict) else users
        return next(u for u in listed if u["id"] == user_id)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key (PEM files) for graph.qq.com and 127.0.0.1: what
    TLS clients must refuse."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "graph.qq.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("graph.qq.com"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "qq.crt", tmp_path / "qq.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
