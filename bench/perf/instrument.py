"""Run a broker command (``serve``) with benchmark counters; SIGUSR1 writes them out.

    python bench/perf/instrument.py serve --config FILE     # PERF_COUNTERS=/path/out.json

The counters answer two targets that throughput cannot:

* **private-key imports**: every call into cryptography's private-key loaders and
  joserfc's key importers. Loading an RSA key costs tens of milliseconds, so one per
  request would cap the broker far below the signing rate; the benchmark reads the count
  before and after a measured window and expects the difference to be 0.
* **client-authentication CPU**: the thread CPU time spent in ``check_client_secret``
  (the secret comparison) and in Authlib's whole client authentication (header parsing,
  client lookup, comparison), compared with the process CPU of the same window: client
  secrets are stored as SHA-256 digests precisely so that this stays a few percent.

Why a launcher and not code in ``broker/``: measuring is the benchmark's business. The
patches wrap functions in place before the broker imports them and add about a
microsecond per wrapped call; the server itself is the unmodified command line
(``broker.cli.main``), with its default threads.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

_lock = threading.Lock()
COUNTS: dict[str, float] = {
    "private_key_imports": 0,
    "secret_checks": 0,
    "secret_check_cpu_s": 0.0,
    "client_auths": 0,
    "client_auth_cpu_s": 0.0,
}


def _counting(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            COUNTS[name] += 1
        return function(*args, **kwargs)

    return wrapper


def _timing(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """Count calls and add up the calling thread's CPU time inside ``function``."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent = time.thread_time() - began
            with _lock:
                COUNTS[name + "s"] += 1
                COUNTS[name + "_cpu_s"] += spent

    return wrapper


def _patch_key_imports() -> None:
    """Wrap every entry point through which a private key gets parsed."""
    from cryptography.hazmat.primitives import serialization
    from joserfc import jwk

    for name in ("load_pem_private_key", "load_der_private_key", "load_ssh_private_key"):
        setattr(serialization, name, _counting("private_key_imports", getattr(serialization, name)))
    # joserfc: the module-level helper and each key type's importers (classmethods).
    jwk.import_key = _counting("private_key_imports", jwk.import_key)
    for cls in (jwk.RSAKey, jwk.ECKey, jwk.OKPKey):
        for name in ("import_key", "import_from_pem_key", "import_from_ssh_key"):
            original = getattr(cls, name, None)
            if original is not None:
                # A bound classmethod: re-wrap as a classmethod over the underlying function.
                patched = _counting("private_key_imports", original.__func__)
                setattr(cls, name, classmethod(patched))


def _patch_client_auth() -> None:
    from authlib.oauth2.rfc6749 import AuthorizationServer

    from broker.oidc.models import Client
    from broker.oidc.registry import StoredClient

    for cls in (Client, StoredClient):
        timed = _timing("secret_check", cls.__dict__["check_client_secret"])
        setattr(cls, "check_client_secret", timed)  # noqa: B010 - patching a method
    timed = _timing("client_auth", AuthorizationServer.authenticate_client)
    setattr(AuthorizationServer, "authenticate_client", timed)  # noqa: B010


def _patch_dispatch() -> None:
    """Thread CPU per request, by path: request threads' own CPU clock, so time spent
    waiting (for the GIL, a lock, QQ) does not count, and C code without the GIL does."""
    from flask import Flask, request

    original = Flask.full_dispatch_request

    @functools.wraps(original)
    def timed(self: Flask) -> Any:
        began = time.thread_time()
        try:
            return original(self)
        finally:
            spent = time.thread_time() - began
            key = "path:" + request.path
            with _lock:
                COUNTS[key + ":n"] = COUNTS.get(key + ":n", 0) + 1
                COUNTS[key + ":cpu_s"] = COUNTS.get(key + ":cpu_s", 0.0) + spent

    setattr(Flask, "full_dispatch_request", timed)  # noqa: B010 - patching a method


def _own_file(path: Path) -> Path:
    """Each process of a ``serve`` with workers writes its own file (the workers inherit
    the patches and the signal handler through ``fork``)."""
    return path.with_name(f"{path.name}.{os.getpid()}")


def _dump(path: Path) -> None:
    path = _own_file(path)
    times = os.times()
    with _lock:
        data = dict(COUNTS)
    data["process_cpu_s"] = times.user + times.system  # this process's own threads
    data["written_at"] = time.time()
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)


def install(path: Path) -> None:
    _patch_key_imports()
    _patch_client_auth()
    _patch_dispatch()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _dump(path)

    signal.signal(signal.SIGUSR1, on_signal)


def read(pid: int, path: Path, timeout: float = 10) -> dict[str, float]:
    """Ask the process ``pid`` and its workers for their counters, summed (orchestrator side)."""
    from perf.sample import tree

    totals: dict[str, float] = {}
    for member in tree(pid):
        for key, value in _read_one(member, path, timeout).items():
            totals[key] = totals.get(key, 0) + value
    return totals


def _read_one(pid: int, path: Path, timeout: float) -> dict[str, float]:
    path = path.with_name(f"{path.name}.{pid}")
    before = path.stat().st_mtime_ns if path.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime_ns != before:
            try:
                result: dict[str, float] = json.loads(path.read_text())
                return result
            except ValueError:
                pass  # replaced under us: read again
        time.sleep(0.02)
    raise RuntimeError(f"no counters from pid {pid} within {timeout} s")


def window(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What happened between two readings: private-key imports, and per path the
    requests served and their thread CPU in milliseconds per request."""
    paths: dict[str, dict[str, float]] = {}
    for key, value in after.items():
        if key.startswith("path:") and key.endswith(":n"):
            base = key[: -len(":n")]
            count = value - before.get(key, 0)
            if count:
                cpu = after[base + ":cpu_s"] - before.get(base + ":cpu_s", 0.0)
                paths[base[len("path:") :]] = {
                    "requests": int(count),
                    "thread_cpu_ms": round(1000 * cpu / count, 3),
                }
    return {
        "private_key_imports": int(after["private_key_imports"] - before["private_key_imports"]),
        "process_cpu_s": after["process_cpu_s"] - before["process_cpu_s"],
        "server_paths": paths,
    }


def main() -> int:
    install(Path(os.environ["PERF_COUNTERS"]))
    from broker.cli import main as broker_main

    return int(broker_main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
