"""``serve`` with ``server.workers > 1``: one listening socket, several worker processes.

``server.workers`` defaults to ``auto``, one worker per CPU this process may run on
(broker/config.py ``auto_workers``), so ``serve`` uses every core unless told
``workers: 1``. ``dev`` always runs in one process.

Why processes: a token request spends most of its CPU time in Python (Authlib, the
signature, SQLAlchemy), and one process runs Python on one core at a time (the GIL).
Threads cover QQ's latency; workers cover the cores.

How (the pre-fork model of gunicorn and nginx, kept small):

* The parent binds the socket(s) once, so every worker accepts on the same port and a
  worker that dies never leaves the port closed. It builds no app: each worker builds
  its own after ``fork`` (database pools, threads and locks must not cross a fork).
* Each worker runs :func:`broker.serving.serve` on the inherited socket, so SIGTERM
  drains it exactly like a single-process server (send it to the parent only: a worker
  takes a second signal as "exit now", hence ``KillMode=mixed`` under systemd). The
  kernel spreads connections across the workers waiting in ``accept``.
* The parent restarts a worker that dies unexpectedly (at most once a second), and on
  SIGTERM/SIGINT passes the signal on, closes its copy of the listening socket (so that,
  as with one process, new connections are refused during the drain instead of waiting
  in the backlog) and waits for the workers to drain (``server.shutdown_timeout`` plus a
  margin, then SIGKILL). A second signal kills the workers and exits at once. Workers
  ask the kernel to kill them if the parent dies (``PR_SET_PDEATHSIG``), so ``kill -9``
  of the parent never leaves orphans serving the port.
* Metrics: with several workers ``PROMETHEUS_MULTIPROC_DIR`` must be set before
  ``prometheus_client`` is imported; :func:`prepare_metrics_dir` does that (a fresh
  temporary directory unless the operator set one), and any worker's scrape then merges
  all workers' counters.
* Rate limits: with ``rate_limits.storage: memory`` each worker would otherwise count
  alone, and a client would get the limits once per worker. :func:`prepare_shared_counters`
  creates one counter table in a fresh temporary directory before the fork; every worker
  maps it (broker/web/ratelimit_shared.py), so the limits hold exactly across workers.
  With Redis the counters are shared already, and the table backs a Redis outage.
  The parent removes the directory when it exits.

The avatar cache stays per process: it is a cache, and each worker fills its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from types import FrameType

from broker.config import Config
from broker.serving import IDENT, ServeError
from broker.web.ratelimit_shared import create_table

log = logging.getLogger("broker.serving")

#: How long the parent waits for draining workers beyond ``server.shutdown_timeout``.
_STOP_MARGIN_SECONDS = 5.0
#: A worker that keeps dying is restarted at most this often.
_RESTART_INTERVAL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1

#: Builds the app inside a worker, and runs it on the inherited sockets until a drain.
WorkerMain = Callable[[socket.socket, socket.socket | None], None]


def prepare_metrics_dir(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Give ``prometheus_client`` a shared directory for the workers (before its import)."""
    if environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    path = tempfile.mkdtemp(prefix="qq-oidc-broker-metrics-")
    environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def prepare_shared_counters(config: Config) -> Path | None:
    """The rate-limit table the workers share, in a new temporary directory (remove
    ``path.parent`` at exit); None when rate limits are off."""
    if not config.rate_limits.enabled:
        return None
    directory = Path(tempfile.mkdtemp(prefix="qq-oidc-broker-ratelimit-"))
    return create_table(directory / "counters")


def listen(host: str, port: int, what: str = "server") -> socket.socket:
    """A listening TCP socket for the workers to share; one line if it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ServeError(f"cannot listen on {host}:{port} for the {what} ({reason})") from err
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Forks ``workers`` processes running ``worker_main`` and keeps them running."""

    def __init__(
        self, config: Config, worker_main: WorkerMain, sockets: tuple[socket.socket, ...]
    ) -> None:
        self.config = config
        self.worker_main = worker_main
        self.sockets = sockets
        self.children: dict[int, int] = {}  # pid -> worker number
        self.stopping: signal.Signals | None = None

    def run(self) -> None:
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        try:
            for number in range(self.config.server.workers):
                self._spawn(number)
            self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping is None:
            self.stopping = signal.Signals(signum)
            for pid in self.children:
                _send(pid, signal.SIGTERM)
        else:  # a second signal: the operator insists
            for pid in self.children:
                _send(pid, signal.SIGKILL)
            # Not logging: the interrupted main thread may be inside a write to stderr.
            name = signal.Signals(signum).name
            os.write(2, f"{IDENT}: second {name} during shutdown: exiting now\n".encode())
            os._exit(128 + signum)

    def _spawn(self, number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            _worker(self.worker_main, self.sockets)
        self.children[pid] = number
        log.info("worker %d started (pid %d)", number, pid)

    def _watch(self) -> None:
        deadline: float | None = None
        last_restart = 0.0
        while self.children:
            if self.stopping is not None and deadline is None:
                log.info("%s: draining %d worker(s)", self.stopping.name, len(self.children))
                # The workers close their copies as they start draining; once ours is
                # closed too, connection attempts are refused, as with one process.
                for sock in self.sockets:
                    sock.close()
                deadline = time.monotonic() + self.config.server.shutdown_timeout
                deadline += _STOP_MARGIN_SECONDS
            if deadline is not None and time.monotonic() > deadline:
                for pid in self.children:
                    _send(pid, signal.SIGKILL)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.1)
                continue
            number = self.children.pop(pid)
            if self.stopping is None:
                log.warning("worker %d (pid %d) exited (%s); starting another", number, pid,
                            _describe(status))  # fmt: skip
                time.sleep(max(0.0, last_restart + _RESTART_INTERVAL_SECONDS - time.monotonic()))
                last_restart = time.monotonic()
                self._spawn(number)
        log.info("all workers stopped; exiting")


def _worker(worker_main: WorkerMain, sockets: tuple[socket.socket, ...]) -> None:
    """The child side of ``fork``: never returns into the parent's code."""
    status = 0
    try:
        _die_with_parent()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        main, metrics = sockets[0], (sockets[1] if len(sockets) > 1 else None)
        worker_main(main, metrics)
    except BaseException as exc:  # a worker reports and exits; the parent restarts it
        log.error("worker failed: %s", exc)
        status = 3
    finally:
        logging.shutdown()
        os._exit(status)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the parent dies, so no orphan keeps the port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans are possible, say nothing
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"status {os.waitstatus_to_exitcode(status)}"


def serve_workers(config: Config, worker_main: WorkerMain) -> None:
    """Bind, fork ``server.workers`` workers, supervise them until SIGTERM/SIGINT."""
    server = config.server
    main = listen(server.host, server.port)
    sockets: tuple[socket.socket, ...] = (main,)
    if config.metrics.port:
        sockets += (listen(config.metrics.host, config.metrics.port, "metrics"),)
    host, port = main.getsockname()[:2]
    log.info("listening on %s port %s (%d workers × %d threads)", host, port,
             server.workers, server.threads)  # fmt: skip
    Supervisor(config, worker_main, sockets).run()
