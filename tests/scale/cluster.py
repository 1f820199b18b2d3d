"""A broker cluster on one machine: N ``serve`` processes, one PostgreSQL, one balancer.

Why a harness of its own: the promise "any instance serves any step, nothing is lost"
can only be shown with separate OS processes that share nothing but the database (and,
in ``files`` key mode, a keys directory), talking real HTTP on 127.0.0.1. In-process
servers would share memory, caches and locks, and hide exactly the bugs this is for.

Pieces (each usable alone; the benchmark scripts import this module, so it stays free
of pytest apart from what ``tests.pg`` brings):

* :class:`Balancer` - a threaded reverse proxy on the issuer's port. Every instance is
  configured with the same issuer, the broker refuses a foreign ``Host``, so the
  balancer forwards ``Host`` unchanged. Tests steer it (``pin``, ``next_backends``,
  ``route``) and read back which instance served each request (``hops``).
* :class:`BrokerProcess` - one ``python -m broker serve`` process with its own port.
* :class:`TcpProxy` - a TCP forwarder in front of PostgreSQL that can ``cut()`` every
  connection and refuse new ones, then ``restore()``: "PostgreSQL briefly unavailable"
  without touching the machine's shared server.
* :class:`Cluster` - the whole thing as a context manager, plus :class:`Login`, which
  drives one login request by request so a test decides where each step lands.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import jwt
import requests

from broker.emulator import EmulatorSettings, create_emulator_app
from tests.pg import fresh_schema
from tests.servers import Emulator, serve

__all__ = [
    "APP_ID",
    "Balancer",
    "BrokerProcess",
    "Cluster",
    "Hop",
    "KeyMode",
    "Login",
    "RegisteredClient",
    "TcpProxy",
    "TokenSet",
    "verify_id_token",
    "wait_until",
]

APP_ID = "101000001"
REPO = Path(__file__).resolve().parents[2]
#: Relying-party URLs: parsed by tests, never followed (port 9 is "discard").
RP = "http://127.0.0.1:9/scale"
DEFAULT_SCOPE = "openid profile offline_access"
#: Signing algorithms a verifier accepts; never "none" or an HMAC.
ID_TOKEN_ALGORITHMS = ["RS256", "ES256", "EdDSA"]
KeyMode = Literal["files", "database"]

#: RFC 9110 §7.6.1 hop-by-hop headers: they describe one connection, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- balancer


@dataclass(frozen=True)
class Hop:
    """One request through the balancer: who served it, and who refused it first.

    ``backend`` is None when no backend answered (the balancer said 502 itself).
    """

    method: str
    path: str  # path and query, as the client sent them
    backend: int | None
    status: int
    refused: tuple[int, ...] = ()

    @property
    def route(self) -> str:
        """The path without its query (``/token``, ``/qq/callback``)."""
        return self.path.split("?", 1)[0]


Policy = Callable[[str, str], int]


class _BalancerServer(ThreadingHTTPServer):
    daemon_threads = True
    balancer: Balancer


class _ProxyHandler(BaseHTTPRequestHandler):
    """Hands every method to :meth:`Balancer.forward`; HTTP/1.1 so clients keep alive."""

    protocol_version = "HTTP/1.1"
    server: _BalancerServer

    def do_GET(self) -> None:
        self.server.balancer.forward(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the record (``Balancer.hops``) is what tests read."""


class Balancer:
    """A small reverse proxy in front of the instances, on the issuer's port.

    Policy, first match wins: a queued choice (:meth:`next_backends`), else the routing
    function (:meth:`pin`, :meth:`route`), else round-robin. A backend that refuses the
    connection makes a 502, or with ``retry_on_refused`` the next backend is tried (a
    health-checked load balancer; a refused connect never reached the app, so retrying
    is safe for any method). A backend that fails after accepting is a 502, never
    retried: the request may have had effects. Redirects are never followed; responses
    come back whole, every ``Set-Cookie`` kept; each request opens a fresh connection to
    its backend, so no pooled connection outlives an instance.
    """

    def __init__(
        self,
        backends: Sequence[int] = (),
        *,
        port: int = 0,
        retry_on_refused: bool = False,
        timeout: float = 60.0,
    ) -> None:
        self.retry_on_refused = retry_on_refused
        self.timeout = timeout
        self._ports: list[int] = list(backends)
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._queue: deque[int] = deque()
        self._policy: Policy | None = None
        self._hops: list[Hop] = []
        self._server = _BalancerServer(("127.0.0.1", port), _ProxyHandler)
        self._server.balancer = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name=f"balancer-{self.port}"
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- steering --------------------------------------------------------------------

    def set_backends(self, ports: Sequence[int]) -> None:
        """The instances' ports; a backend's index is its position here."""
        with self._lock:
            self._ports = list(ports)

    def pin(self, index: int | None) -> None:
        """Send every request to backend ``index`` (None: back to round-robin)."""
        if index is not None:
            self._check(index)
        self.route(None if index is None else (lambda _method, _path: index))

    def route(self, policy: Policy | None) -> None:
        """Choose the backend with ``policy(method, path)`` (None: round-robin)."""
        with self._lock:
            self._policy = policy

    @contextmanager
    def pinned(self, index: int) -> Iterator[None]:
        """:meth:`pin` for a block, then round-robin again."""
        self.pin(index)
        try:
            yield
        finally:
            self.pin(None)

    def next_backends(self, indexes: Sequence[int]) -> None:
        """The next requests, in arrival order, go to these backends (before any policy)."""
        for index in indexes:
            self._check(index)
        with self._lock:
            self._queue.extend(indexes)

    def _check(self, index: int) -> None:
        """A typo in a test must fail loudly, not route somewhere else."""
        with self._lock:
            count = len(self._ports)
        if not 0 <= index < count:
            raise ValueError(f"backend {index} does not exist ({count} backend(s))")

    def reset(self) -> None:
        """Round-robin, nothing queued, an empty record."""
        with self._lock:
            self._queue.clear()
            self._policy = None
            self._hops.clear()

    # -- record ----------------------------------------------------------------------

    def hops(self, route: str | None = None) -> list[Hop]:
        """Requests served so far (only those to ``route``, a path without query)."""
        with self._lock:
            recorded = list(self._hops)
        return [hop for hop in recorded if route is None or hop.route == route]

    def mark(self) -> int:
        """A position in the record, for :meth:`since`."""
        with self._lock:
            return len(self._hops)

    def since(self, mark: int) -> list[Hop]:
        with self._lock:
            return list(self._hops[mark:])

    def last(self, route: str) -> Hop:
        """The most recent request to ``route``."""
        found = self.hops(route)
        assert found, f"no request to {route} went through the balancer"
        return found[-1]

    # -- forwarding ------------------------------------------------------------------

    def _order(self, method: str, path: str) -> list[int]:
        with self._lock:
            count = len(self._ports)
            if not count:
                return []
            if self._queue:
                first = self._queue.popleft()
            elif self._policy is not None:
                first = self._policy(method, path)
            else:
                first = next(self._counter) % count
        return [(first + step) % count for step in range(count)]

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        """Forward one request; called on the handler's thread."""
        method, path = handler.command, handler.path
        try:
            body = _read_body(handler)
        except ValueError:
            _reply(handler, 400, "Bad Request", [], b"unreadable request body")
            return
        headers = _request_headers(handler, len(body))
        refused: list[int] = []
        for index in self._order(method, path):
            with self._lock:
                port = self._ports[index]
            try:
                status, reason, answer_headers, data = _exchange(
                    port, method, path, headers, body, self.timeout
                )
            except ConnectionRefusedError:
                refused.append(index)
                if self.retry_on_refused:
                    continue
                break
            except (OSError, http.client.HTTPException) as err:
                self._note(Hop(method, path, index, 502, tuple(refused)))
                message = f"backend {index} failed: {type(err).__name__}".encode()
                _reply(handler, 502, "Bad Gateway", [], message)
                return
            self._note(Hop(method, path, index, status, tuple(refused)))
            _reply(handler, status, reason, answer_headers, data)
            return
        self._note(Hop(method, path, None, 502, tuple(refused)))
        _reply(handler, 502, "Bad Gateway", [], b"no backend accepted the connection")

    def _note(self, hop: Hop) -> None:
        with self._lock:
            self._hops.append(hop)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, de-chunked (the backend gets a Content-Length instead)."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length > 0 else b""


def _request_headers(handler: BaseHTTPRequestHandler, body_length: int) -> list[tuple[str, str]]:
    """The client's headers, Host included, minus hop-by-hop; X-Forwarded-For appended."""
    skip = HOP_BY_HOP | {"content-length", "x-forwarded-for"}
    headers = [(name, value) for name, value in handler.headers.items() if name.lower() not in skip]
    chain = [*(handler.headers.get_all("X-Forwarded-For") or []), handler.client_address[0]]
    headers.append(("X-Forwarded-For", ", ".join(chain)))
    if body_length or handler.command in ("POST", "PUT", "PATCH"):
        headers.append(("Content-Length", str(body_length)))
    headers.append(("Connection", "close"))
    return headers


def _exchange(
    port: int,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    timeout: float,
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        data = response.read()
        return response.status, response.reason, response.getheaders(), data
    finally:
        connection.close()


def _reply(
    handler: BaseHTTPRequestHandler,
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    data: bytes,
) -> None:
    """Write the response; the client may have gone away, which is its business."""
    head = handler.command == "HEAD"
    try:
        handler.send_response_only(status, reason)
        for name, value in headers:
            lowered = name.lower()
            if lowered in HOP_BY_HOP or (lowered == "content-length" and not head):
                continue
            handler.send_header(name, value)
        if not head and status not in (204, 304) and status >= 200:
            handler.send_header("Content-Length", str(len(data)))
        if not headers:
            handler.send_header("Content-Type", "text/plain; charset=utf-8")
        handler.end_headers()
        if not head:
            handler.wfile.write(data)
        handler.wfile.flush()
    except OSError:
        handler.close_connection = True


# --------------------------------------------------------------------------- PostgreSQL proxy


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; :meth:`cut` makes the target vanish.

    ``cut()`` resets every open connection and, until ``restore()``, resets each new one
    right after accepting it: to the brokers PostgreSQL is down (their pooled
    connections die, reconnects fail at once). The listening port stays, so the URL in
    the brokers' config stays valid.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # so close() is noticed without closing under accept()
        self.port = int(self._listener.getsockname()[1])
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.accepted = 0
        self.rejected = 0
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"pg-{self.port}")
        self._thread.start()

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def cut(self) -> None:
        """Close every connection now and refuse the coming ones."""
        self._cut.set()
        with self._lock:
            victims = list(self._open)
            self._open.clear()
        for sock in victims:
            _reset(sock)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self._cut.is_set():
                self.rejected += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._cut.is_set():  # cut() ran while we connected
                    _reset(client)
                    _reset(upstream)
                    continue
                self._open.update((client, upstream))
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._open.discard(source)
            self._open.discard(sink)
        for sock in (source, sink):
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Abort the connection: wake any thread blocked on it, then close with RST."""
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def via(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced; user, database and query kept."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}:{port}"))


# --------------------------------------------------------------------------- processes


def _dead(pid: int) -> bool:
    """Gone, or a zombie whose every thread has exited: the main thread turns zombie
    first, and the others (waitress's) keep the process's sockets open until they end."""
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    for thread in threads:
        try:
            state = (thread / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:  # that thread has just gone
            continue
        if state not in ("Z", "X"):
            return False
    return True


class BrokerProcess:
    """One ``python -m broker serve --config FILE`` on its own port, output in a log file.

    The config is shared by every instance; what differs (the port, in database key mode
    the keys directory) comes from ``env`` through ``${VAR}`` interpolation.
    """

    def __init__(
        self, index: int, port: int, config: Path, env: dict[str, str], log_dir: Path
    ) -> None:
        self.index = index
        self.port = port
        self.config = config
        self.env = env
        self.log_dir = log_dir
        self.logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._workers: list[int] = []  # the worker pids when it was last signalled
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """This instance's own address (only /healthz and /readyz accept its Host)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> None:
        """Spawn the process (does not wait; see :meth:`wait_ready`)."""
        assert not self.alive, f"instance {self.index} is already running"
        self._close_log()
        self._workers = []
        log = self.log_dir / f"broker-{self.index}-{len(self.logs)}.log"
        self.logs.append(log)
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve", "--config", str(self.config)],
            cwd=self.config.parent,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until GET /healthz on its own port answers 200; fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            if self.answers():
                return
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"instance {self.index} exited early:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"instance {self.index} never came up:\n{self.log_text()}")
            time.sleep(0.1)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers(self) -> bool:
        """Whether GET /healthz on its own port says 200 right now."""
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to finish anything."""
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: the broker stops accepting, drains what is in flight, exits 0."""
        self._signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        """The exit status (negative: killed by that signal), once the instance is gone:
        its ``serve`` process and the workers it had forked (``server.workers`` > 1, the
        default on several cores). After a SIGKILL of the parent the kernel kills them a
        moment later (PR_SET_PDEATHSIG); until then they still hold the port, and a new
        connection would be reset instead of refused."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        status = self.proc.wait(timeout=timeout)
        while not all(_dead(pid) for pid in self._workers):
            assert time.monotonic() < deadline, f"instance {self.index}: workers outlived it"
            time.sleep(0.01)
        self._close_log()
        return status

    def stop(self) -> None:
        """Cleanup: kill if still running, reap, close the log."""
        if self.alive:
            self.kill()
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self._close_log()

    def log_text(self) -> str:
        """Everything every run of this instance printed."""
        if self._log_file is not None:
            self._log_file.flush()
        return "".join(path.read_text(encoding="utf-8", errors="replace") for path in self.logs)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            with suppress(OSError):
                self._workers = [int(pid) for pid in children.read_text().split()]
            self.proc.send_signal(sig)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# --------------------------------------------------------------------------- emulator


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True)
class RegisteredClient:
    """The relying party every cluster registers: confidential, with refresh and logout."""

    client_id: str
    client_secret: str
    redirect_uri: str
    post_logout_redirect_uri: str


class Cluster:
    """Emulator, PostgreSQL schema (behind a :class:`TcpProxy`), N instances, balancer.

    ``key_mode``: ``files`` shares one keys directory (absolute path) between instances;
    ``database`` gives each instance its own empty keys directory and sets
    ``keys.storage: database`` with ``keys.encryption_key`` from the environment, so
    instances can only agree on keys and secrets through PostgreSQL.
    """

    def __init__(
        self,
        workdir: Path,
        instances: int = 3,
        *,
        key_mode: KeyMode = "files",
        retry_on_refused: bool = False,
        shutdown_timeout: int = 30,
        threads: int = 16,
        pool_size: int = 4,
        max_overflow: int = 4,
        lifetimes: dict[str, int] | None = None,
        keys: dict[str, Any] | None = None,
        user: str = "zhangsan",
    ) -> None:
        if instances < 1:
            raise ValueError("a cluster needs at least one instance")
        if key_mode not in ("files", "database"):
            raise ValueError(f"key_mode must be files or database, not {key_mode!r}")
        self.workdir = workdir
        self.count = instances
        self.key_mode: KeyMode = key_mode
        self.retry_on_refused = retry_on_refused
        self.shutdown_timeout = shutdown_timeout
        self.threads = threads
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.lifetimes = dict(lifetimes or {})
        self.keys = dict(keys or {})  # more keys.* settings (jwks_max_age, rotation)
        self.user = user
        self.client = RegisteredClient(
            client_id="rp-scale",
            client_secret=secrets.token_urlsafe(32),
            redirect_uri=f"{RP}/callback",
            post_logout_redirect_uri=f"{RP}/logged-out",
        )
        self.app_key = secrets.token_hex(16)
        self.encryption_key = secrets.token_urlsafe(32)
        self.brokers: list[BrokerProcess] = []
        self._stack = ExitStack()

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        stack = self._stack
        self.balancer = Balancer(retry_on_refused=self.retry_on_refused)
        stack.callback(self.balancer.close)
        self.issuer = self.balancer.url
        settings = EmulatorSettings(
            app_id=APP_ID, app_key=self.app_key, callbacks=[f"{self.issuer}/qq/callback"]
        )
        self.emulator = Emulator(serve(create_emulator_app(settings)))
        stack.callback(self.emulator.served.stop)
        schema_url = stack.enter_context(fresh_schema("scale"))
        target = urlsplit(schema_url)
        self.pg = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
        stack.callback(self.pg.close)
        self.storage_url = via(schema_url, "127.0.0.1", self.pg.port)
        config = self._write_config()
        log_dir = self.workdir / "logs"
        log_dir.mkdir(exist_ok=True)
        ports = _free_ports(self.count)
        for index, port in enumerate(ports):
            broker = BrokerProcess(index, port, config, self._env(index, port), log_dir)
            self.brokers.append(broker)
            stack.callback(broker.stop)
        # Started together, as a deploy does: migrations and key generation must cope.
        for broker in self.brokers:
            broker.start()
        for broker in self.brokers:
            broker.wait_ready()
        self.balancer.set_backends(ports)
        self.emulator.control(auto_login=self.user)

    def stop(self) -> None:
        """Instances first (killed), then proxy, schema, emulator, balancer."""
        self._stack.close()

    def restart(self, index: int) -> BrokerProcess:
        """Start instance ``index`` again on its port (after kill/terminate) and wait for it."""
        broker = self.brokers[index]
        if broker.alive:
            broker.stop()
        elif broker.proc is not None:
            broker.wait(timeout=30)
        broker.start()
        broker.wait_ready()
        return broker

    def ensure_running(self) -> None:
        """Restart whatever a test killed or stopped, so the next test finds every instance
        up; one still alive but not answering (say, draining after SIGTERM) is replaced."""
        for broker in self.brokers:
            if not broker.alive or not broker.answers():
                self.restart(broker.index)

    def reset(self) -> None:
        """Between tests: round-robin, empty record, emulator defaults with auto-login."""
        self.balancer.reset()
        self.emulator.reset()
        self.emulator.control(auto_login=self.user)

    def cli(self, *args: str, index: int = 0) -> subprocess.CompletedProcess[str]:
        """Run ``qq-oidc-broker ARGS --config <the cluster's config>`` as instance
        ``index``'s operator would (its environment, its keys directory)."""
        broker = self.brokers[index]
        return subprocess.run(
            [sys.executable, "-m", "broker", *args, "--config", str(broker.config)],
            cwd=broker.config.parent,
            env=self._env(index, broker.port),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def _env(self, index: int, port: int) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "BROKER_CONFIG"}
        env.update(
            BROKER_PORT=str(port),
            QQ_APP_KEY=self.app_key,
            RP_SCALE_SECRET=self.client.client_secret,
            BROKER_KEY_ENCRYPTION_KEY=self.encryption_key,
            BROKER_KEYS_DIR=str(self._keys_dir(index)),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        )
        return env

    def _keys_dir(self, index: int) -> Path:
        """Shared in files mode; one per instance in database mode (nothing to share)."""
        if self.key_mode == "files":
            return self.workdir / "keys"
        return self.workdir / f"keys-{index}"

    def _write_config(self) -> Path:
        client = self.client
        keys = ["keys:", "  dir: ${BROKER_KEYS_DIR}"]
        if self.key_mode == "database":
            keys += ["  storage: database", "  encryption_key: ${BROKER_KEY_ENCRYPTION_KEY}"]
        keys += [f"  {name}: {json.dumps(value)}" for name, value in self.keys.items()]
        lifetimes = ["lifetimes:", *(f"  {k}: {v}" for k, v in self.lifetimes.items())]
        lines = [
            f"issuer: {self.issuer}",
            "server:",
            "  host: 127.0.0.1",
            "  port: ${BROKER_PORT}",
            f"  threads: {self.threads}",
            f"  shutdown_timeout: {self.shutdown_timeout}",
            "storage:",
            f"  url: {json.dumps(self.storage_url)}",
            f"  pool_size: {self.pool_size}",
            f"  max_overflow: {self.max_overflow}",
            *keys,
            "upstream:",
            "  qq:",
            f'    app_id: "{APP_ID}"',
            "    app_key: ${QQ_APP_KEY}",
            f"    base_url: {self.emulator.url}",
            "rate_limits:",
            "  enabled: false",
            *(lifetimes if self.lifetimes else []),
            "clients:",
            f"  - client_id: {client.client_id}",
            "    client_secret: ${RP_SCALE_SECRET}",
            f"    redirect_uris: [{client.redirect_uri}]",
            "    grant_types: [authorization_code, refresh_token]",
            f"    post_logout_redirect_uris: [{client.post_logout_redirect_uri}]",
        ]
        path = self.workdir / "config.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    # -- talking to it ---------------------------------------------------------------

    @property
    def host(self) -> str:
        """The issuer's host:port, the only Host header an instance accepts."""
        return urlsplit(self.issuer).netloc

    def instance_get(self, index: int, path: str, timeout: float = 10) -> requests.Response:
        """GET straight to instance ``index`` (not through the balancer), as the issuer."""
        return requests.get(
            f"{self.brokers[index].url}{path}", headers={"Host": self.host}, timeout=timeout
        )

    def token(self, data: dict[str, str], timeout: float = 30) -> requests.Response:
        """POST /token through the balancer as the registered client."""
        return requests.post(
            f"{self.issuer}/token",
            data=data,
            auth=(self.client.client_id, self.client.client_secret),
            timeout=timeout,
        )

    def refresh(self, refresh_token: str) -> requests.Response:
        return self.token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def userinfo(self, access_token: str, timeout: float = 30) -> requests.Response:
        return requests.get(
            f"{self.issuer}/userinfo",
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=timeout,
        )

    def jwks(self) -> dict[str, Any]:
        """The JWKS from whichever instance the balancer picks."""
        keys: dict[str, Any] = requests.get(f"{self.issuer}/jwks.json", timeout=10).json()
        return keys

    def verify(self, id_token: str, jwks: dict[str, Any], nonce: str | None = None) -> Any:
        return verify_id_token(
            id_token, jwks, issuer=self.issuer, audience=self.client.client_id, nonce=nonce
        )


def _free_ports(count: int) -> list[int]:
    """Distinct ports that were free a moment ago (held together so none repeats)."""
    held = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    try:
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def verify_id_token(
    id_token: str,
    jwks: dict[str, Any],
    *,
    issuer: str,
    audience: str,
    nonce: str | None = None,
) -> dict[str, Any]:
    """Check signature (key by ``kid``), ``iss``, ``aud``, ``exp`` and ``nonce`` with PyJWT."""
    header = jwt.get_unverified_header(id_token)
    key_set = jwt.PyJWKSet.from_dict(jwks)
    matching = [key for key in key_set.keys if key.key_id == header.get("kid")]
    assert matching, f"kid {header.get('kid')!r} is not in the JWKS"
    claims: dict[str, Any] = jwt.decode(
        id_token,
        matching[0].key,
        algorithms=ID_TOKEN_ALGORITHMS,
        audience=audience,
        issuer=issuer,
    )
    if nonce is not None:
        assert claims.get("nonce") == nonce, "nonce mismatch"
    return claims


# --------------------------------------------------------------------------- one login


@dataclass(frozen=True)
class TokenSet:
    """A successful token response."""

    access_token: str
    id_token: str
    refresh_token: str | None
    raw: dict[str, Any]

    @classmethod
    def from_response(cls, response: requests.Response) -> TokenSet:
        assert response.status_code == 200, f"{response.status_code}: {response.text}"
        body: dict[str, Any] = response.json()
        return cls(body["access_token"], body["id_token"], body.get("refresh_token"), body)


class Login:
    """One user agent and its relying party, one method per HTTP request.

    Each broker request is a single call, so a test can steer the balancer before it;
    the browser's cookie jar carries the login-binding cookies from step to step, also
    across instances. The step to QQ goes straight to the emulator (auto-login).
    """

    def __init__(self, cluster: Cluster, scope: str = DEFAULT_SCOPE, timeout: float = 30) -> None:
        self.cluster = cluster
        self.scope = scope
        self.timeout = timeout
        self.browser = requests.Session()
        self.state = secrets.token_urlsafe(16)
        self.nonce = secrets.token_urlsafe(16)
        self.verifier = secrets.token_urlsafe(48)

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def authorize_url(self, **extra: str) -> str:
        client = self.cluster.client
        params = {
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": client.redirect_uri,
            "scope": self.scope,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": self.challenge,
            "code_challenge_method": "S256",
            **extra,
        }
        return f"{self.cluster.issuer}/authorize?{urlencode(params)}"

    def get(self, url: str) -> requests.Response:
        """One browser request, redirects not followed."""
        return self.browser.get(url, allow_redirects=False, timeout=self.timeout)

    def authorize(self) -> str:
        """GET /authorize: the broker sends the browser to QQ. Returns that URL."""
        response = self.get(self.authorize_url())
        location = response.headers.get("Location", "")
        assert response.status_code == 302, f"{response.status_code}: {response.text[:300]}"
        assert location.startswith(self.cluster.emulator.url), location
        return location

    def at_qq(self, url: str) -> str:
        """At the emulator (auto-login): QQ sends the browser to /qq/callback. Returns that URL."""
        response = self.get(url)
        location = response.headers.get("Location", "")
        assert response.status_code == 302, f"{response.status_code}: {response.text[:300]}"
        assert location.startswith(f"{self.cluster.issuer}/qq/callback"), location
        return location

    def callback(self, url: str) -> str:
        """GET /qq/callback: the broker redirects to the RP with a code. Returns the code."""
        return self.code_from(self.get(url))

    def code_from(self, response: requests.Response) -> str:
        """The code of a redirect to the RP, after checking ``state`` and ``iss``."""
        assert response.status_code == 302, f"{response.status_code}: {response.text[:300]}"
        location = response.headers["Location"]
        assert location.startswith(self.cluster.client.redirect_uri), location
        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert query.get("state") == self.state, query
        assert query.get("iss") == self.cluster.issuer, query  # RFC 9207
        assert "code" in query, query
        return query["code"]

    def to_code(self) -> str:
        """authorize, QQ, callback: the code the RP receives."""
        return self.callback(self.at_qq(self.authorize()))

    def redeem(self, code: str) -> requests.Response:
        """POST /token with the code (client_secret_basic + PKCE)."""
        return self.cluster.token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.cluster.client.redirect_uri,
                "code_verifier": self.verifier,
            },
            timeout=self.timeout,
        )

    def complete(self) -> TokenSet:
        """The whole login on whatever instances the balancer picks."""
        return TokenSet.from_response(self.redeem(self.to_code()))

    def logout(self, id_token: str, state: str = "bye") -> requests.Response:
        """RP-initiated logout with a hint, in this browser (its session cookie)."""
        params = {
            "id_token_hint": id_token,
            "post_logout_redirect_uri": self.cluster.client.post_logout_redirect_uri,
            "state": state,
        }
        return self.get(f"{self.cluster.issuer}/logout?{urlencode(params)}")
