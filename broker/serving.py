"""``qq-oidc-broker serve``: waitress, with a graceful drain on SIGTERM and SIGINT.

Why not ``waitress.serve``: SIGTERM (what systemd, Docker and Kubernetes send on every
deploy) kills it outright, and SIGINT drops every open connection. Either way the logins
in flight are lost, and a ``/qq/callback`` spends seconds waiting on QQ, so a deploy would
turn them into connection errors for the user. Here the first signal:

1. closes the listening socket(s) at once, so new connections are refused and a load
   balancer moves on to another instance;
2. keeps the event loop running, so the requests already accepted (running, queued, or
   still being received) finish and their responses are written out; waitress's task
   threads only put small responses into a buffer that the loop thread sends;
3. closes each connection as soon as it is idle (keep-alive connections right away);
4. returns when none is left, or after ``server.shutdown_timeout`` seconds, cutting what
   still runs, so the process exits 0 either way.

A second signal exits at once (status 128 + signal number): the operator insists.

The handlers do no work themselves: they set a flag, and ``signal.set_wakeup_fd`` wakes
the ``select()`` the loop sleeps in (a Python handler alone would not interrupt it: since
PEP 475 ``select()`` is retried after the handler, until its timeout).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from types import FrameType
from typing import Any

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server

from broker.config import ServerConfig

__all__ = ["IDENT", "ServeError", "bind", "serve"]

log = logging.getLogger("broker.serving")

IDENT = "qq-oidc-broker"
#: The signals that start a drain.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Longest sleep of the draining loop between checks (tasks wake it when they finish).
_DRAIN_POLL_SECONDS = 1.0

#: waitress's socket map: file descriptor -> listener, connection or wake-up pipe.
SocketMap = dict[int, Any]


class ServeError(Exception):
    """The server cannot start (address taken, host unknown): one line for the operator."""


def bind(
    app: Any,
    server: ServerConfig,
    *,
    ident: str = IDENT,
    socket_map: SocketMap | None = None,
    sock: socket.socket | None = None,
) -> MultiSocketServer | BaseWSGIServer:
    """A waitress server listening on ``server.host:server.port`` (not yet running).

    With ``server.trusted_proxies`` set, waitress must pass X-Forwarded-For through:
    by default it deletes it (and the other proxy headers) before the app runs, and then
    ``broker.web.proxies`` could not see it. Its own ``trusted_proxy`` setting cannot
    replace ours: it takes a single address, not networks.

    ``sock``: an already listening socket (a worker of :mod:`broker.workers` inherits
    its parent's) instead of binding ``server.host:server.port``.
    """
    where = _where(sock, server.host, server.port)
    try:
        return create_server(
            app,
            map=socket_map,
            **where,
            threads=server.threads,
            ident=ident,
            clear_untrusted_proxy_headers=not server.trusted_proxies,
        )
    except (OSError, ValueError) as err:  # waitress: ValueError when the host does not resolve
        reason = getattr(err, "strerror", None) or str(err)
        raise ServeError(f"cannot listen on {server.host}:{server.port} ({reason})") from err


def _where(sock: socket.socket | None, host: str, port: int) -> dict[str, Any]:
    """waitress's listening arguments: an inherited socket, or an address to bind."""
    return {"sockets": [sock]} if sock is not None else {"host": host, "port": port}


def serve(
    app: Any,
    server: ServerConfig,
    *,
    ident: str = IDENT,
    metrics: tuple[Any, str, int] | None = None,
    sock: socket.socket | None = None,
    metrics_sock: socket.socket | None = None,
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then drain (module docstring) and return.

    ``metrics`` is ``(wsgi_app, host, port)`` for the separate metrics listener: it runs
    in the same loop (so it stops and drains with the main listener) but with threads of
    its own, so that a scrape is answered while every main thread waits on a slow QQ.

    Call it from the main thread (Python runs signal handlers there only). Raises
    :class:`ServeError` when an address cannot be bound. ``sock``/``metrics_sock``:
    listening sockets inherited from :mod:`broker.workers` instead of binding.
    """
    socket_map: SocketMap = {}
    httpd = bind(app, server, ident=ident, socket_map=socket_map, sock=sock)
    adj = httpd.adj
    listeners = [obj for obj in socket_map.values() if isinstance(obj, BaseWSGIServer)]
    for listener in listeners:
        host, port = listener.getsockname()
        log.info("listening on %s port %s (%d threads)", host, port, server.threads)
    side = _bind_metrics(metrics, httpd, socket_map, ident, metrics_sock) if metrics else None
    if side is not None:
        side_listeners = [o for o in socket_map.values() if isinstance(o, BaseWSGIServer)]
        listeners = list(dict.fromkeys([*listeners, *side_listeners]))

    try:
        with _Signals(socket_map) as signals:
            while signals.received is None:
                wasyncore.loop(adj.asyncore_loop_timeout, adj.asyncore_use_poll, socket_map, 1)
            _stop_listening(listeners)
            log.info(
                "%s: no longer accepting connections; waiting up to %d s for %d request(s) "
                "in progress",
                signals.received.name,
                server.shutdown_timeout,
                _count(_busy(socket_map)),
            )
            cut = _drain(socket_map, server.shutdown_timeout, adj.asyncore_use_poll)
            if cut:
                log.warning(
                    "shutdown_timeout (%d s) reached: cutting %d unfinished request(s); exiting",
                    server.shutdown_timeout,
                    cut,
                )
            else:
                log.info("all requests finished; exiting")
    finally:
        httpd.task_dispatcher.set_thread_count(0)  # idle threads leave; none starts a new task
        if side is not None:
            side.task_dispatcher.set_thread_count(0)
        _close_all(socket_map)


#: Threads of the metrics listener: scrapes are rare and quick.
METRICS_THREADS = 2


def _bind_metrics(
    metrics: tuple[Any, str, int],
    httpd: MultiSocketServer | BaseWSGIServer,
    socket_map: SocketMap,
    ident: str,
    sock: socket.socket | None = None,
) -> MultiSocketServer | BaseWSGIServer:
    """Bind the metrics listener into the main loop's socket map (see :func:`serve`)."""
    app, host, port = metrics
    where = _where(sock, host, port)
    try:
        side = create_server(
            app, map=socket_map, **where, threads=METRICS_THREADS, ident=ident
        )
    except (OSError, ValueError) as err:
        httpd.task_dispatcher.set_thread_count(0)
        _close_all(socket_map)
        reason = getattr(err, "strerror", None) or str(err)
        raise ServeError(f"cannot listen on {host}:{port} for metrics ({reason})") from err
    log.info("metrics on http://%s:%s/metrics", host, port)
    return side


def _stop_listening(listeners: list[BaseWSGIServer]) -> None:
    """Close the listening sockets: from here on, connection attempts are refused.

    Only the sockets: ``BaseWSGIServer.close()`` would also close the trigger that task
    threads pull to wake the loop when a response is ready to send.
    """
    for listener in listeners:
        wasyncore.dispatcher.close(listener)


def _drain(socket_map: SocketMap, timeout: float, use_poll: bool) -> int:
    """Run the loop until no connection has work left, or ``timeout`` seconds.

    Returns how many requests were still unfinished when the time ran out (0: none).
    """
    deadline = time.monotonic() + timeout
    while True:
        busy = _busy(socket_map)
        for channel in _channels(socket_map):
            if channel not in busy:
                channel.handle_close()  # idle (keep-alive): nothing to lose
        remaining = deadline - time.monotonic()
        if not busy or remaining <= 0:
            return _count(busy)
        wasyncore.loop(min(remaining, _DRAIN_POLL_SECONDS), use_poll, socket_map, 1)


def _channels(socket_map: SocketMap) -> list[HTTPChannel]:
    return [obj for obj in list(socket_map.values()) if isinstance(obj, HTTPChannel)]


def _busy(socket_map: SocketMap) -> list[HTTPChannel]:
    """Connections with a request being received, queued, run, or a response not yet sent.

    ``requests`` holds a request from the moment it is fully read until its task has put
    the whole response into the output buffer; ``request`` is one still being received.
    """
    return [
        channel
        for channel in _channels(socket_map)
        if channel.requests or channel.request is not None or channel.total_outbufs_len
    ]


def _count(channels: list[HTTPChannel]) -> int:
    return sum(max(1, len(channel.requests)) for channel in channels)


def _close_all(socket_map: SocketMap) -> None:
    """Close every connection (waking task threads blocked on them), then the rest."""
    for channel in _channels(socket_map):
        channel.handle_close()
    wasyncore.close_all(socket_map)


class _Wakeup(wasyncore.dispatcher):
    """The read end of the ``set_wakeup_fd`` socket pair: a signal makes it readable."""

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        self.recv(64)  # the signal numbers; the handler has the one that matters


#: Signals this close together are one request to stop, not an operator insisting.
SAME_STOP_SECONDS = 1.0


class _Signals:
    """SIGTERM/SIGINT handlers for the duration of ``serve``; restored on exit."""

    def __init__(self, socket_map: SocketMap) -> None:
        self.received: signal.Signals | None = None
        self._received_at = 0.0
        self._map = socket_map
        self._writer: socket.socket | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._previous_fd = -1

    def __enter__(self) -> _Signals:
        reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)  # set_wakeup_fd requires it
        _Wakeup(reader, self._map)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        if self._writer is not None:
            self._writer.close()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.received is None:
            self.received = signal.Signals(signum)
            self._received_at = now
            return
        if now - self._received_at < SAME_STOP_SECONDS:
            # A worker of ``server.workers`` hears one stop twice: from its parent and
            # from whoever signalled the whole group (systemd's KillMode=control-group,
            # Ctrl-C in a terminal). Only a later signal means "stop now".
            return
        # Not logging: the interrupted main thread may be inside a write to stderr.
        name = signal.Signals(signum).name
        os.write(2, f"{IDENT}: second {name} during shutdown: exiting now\n".encode())
        os._exit(128 + signum)
