"""The processes under test, each a separate OS process on 127.0.0.1 with its own log.

Why separate processes: the load generators (``wrk``, Node) must not share a GIL with
the server, and peak memory and CPU are read per process from ``/proc``. Every server
is started the way an operator would start it (``serve`` and ``emulator`` through the
broker's command line), wrapped only by :mod:`perf.instrument` where counters are needed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
PERF = BENCH / "perf"
PEER = BENCH / "peer"

APP_ID = "101000001"
#: The relying party's callback: never followed, the code is read from the Location header.
REDIRECT_URI = "http://127.0.0.1:9/cb"
#: One confidential client per measured algorithm; both use client_secret_basic.
CLIENT_FOR_ALG = {"RS256": "rp-rs256", "ES256": "rp-es256", "EdDSA": "rp-eddsa"}
#: The emulator's user that ``auto_login`` logs in (broker/emulator/default_users.yaml).
AUTO_LOGIN_USER = "zhangsan"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(url: str, body: Any = None, method: str | None = None, timeout: float = 10) -> Any:
    """A small JSON request (control endpoints, counters): stdlib only, no pooling needed."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - our own 127.0.0.1 URLs
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read() or b"null")


@dataclass
class Proc:
    """A running server: its pid (for /proc), base URL and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _wait_healthy(proc: Proc, path: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise SystemExit(f"{proc.name} exited early; its log:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(proc.url + path, timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"{proc.name} did not become healthy; its log:\n{proc.log_tail()}")


@contextmanager
def started(
    name: str,
    argv: Sequence[str],
    url: str,
    health: str,
    logs: Path,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> Iterator[Proc]:
    """Start ``argv``, wait for ``url + health`` to answer 200, stop it (SIGTERM) on exit."""
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(  # noqa: S603 - our own interpreter, node and arguments
            list(argv),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    proc = Proc(name, popen, url, log)
    try:
        _wait_healthy(proc, health)
        yield proc
    finally:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


# --------------------------------------------------------------------------- the broker


def broker_config(
    port: int, workdir: Path, emulator: str, algorithm: str, algorithms: Sequence[str]
) -> str:
    """The benchmark's config: SQLite (the single-instance default), rate limits off (a
    burst from 127.0.0.1 is the point, DESIGN.md), codes that live long enough to be
    minted ahead, and one confidential client per algorithm. ``server`` sets host and port
    only: threads stay at the default, as the targets require."""
    clients = "".join(
        f"""
  - client_id: {CLIENT_FOR_ALG[alg]}
    client_secret: ${{BENCH_CLIENT_SECRET}}
    redirect_uris: ["{REDIRECT_URI}"]
    token_endpoint_auth_method: client_secret_basic
    id_token_signed_response_alg: {alg}
"""
        for alg in algorithms
    )
    return f"""\
issuer: http://127.0.0.1:{port}
server: {{host: 127.0.0.1, port: {port}}}
storage: {{url: "sqlite:///{workdir / "broker.sqlite3"}"}}
keys: {{dir: "{workdir / "keys"}", algorithm: {algorithm}, algorithms: [{", ".join(algorithms)}]}}
lifetimes: {{code: 600}}
rate_limits: {{enabled: false}}
upstream: {{qq: {{app_id: "{APP_ID}", app_key: "${{QQ_APP_KEY}}", base_url: "{emulator}"}}}}
clients:{clients}"""


@dataclass
class BrokerSetup:
    """What the load generators need to talk to the broker and its emulator."""

    broker: Proc
    emulator: Proc
    client_secret: str
    counters: Path

    @property
    def issuer(self) -> str:
        return self.broker.url


@contextmanager
def broker(
    workdir: Path,
    logs: Path,
    algorithms: Sequence[str],
    *,
    emulator_threads: int = 256,
) -> Iterator[BrokerSetup]:
    """The QQ emulator (auto-login, no latency) and one instrumented ``serve`` process."""
    app_key, secret = os.urandom(16).hex(), os.urandom(24).hex()
    env = {"QQ_APP_KEY": app_key, "BENCH_CLIENT_SECRET": secret}
    port, emulator_port = free_port(), free_port()
    emulator_url, issuer = f"http://127.0.0.1:{emulator_port}", f"http://127.0.0.1:{port}"
    emulator_argv = [sys.executable, "-m", "broker", "emulator", "--port", str(emulator_port)]
    emulator_argv += ["--threads", str(emulator_threads), "--app-id", APP_ID]
    emulator_argv += ["--app-key", app_key, "--callback", f"{issuer}/qq/callback"]
    config = workdir / "broker.yaml"
    config.write_text(broker_config(port, workdir, emulator_url, algorithms[0], algorithms))
    counters = workdir / "counters.json"
    serve_argv = [sys.executable, str(PERF / "instrument.py"), "serve", "--config", str(config)]
    with (
        started("emulator", emulator_argv, emulator_url, "/_emulator/control", logs, env) as emu,
        started(
            "broker",
            serve_argv,
            issuer,
            "/healthz",
            logs,
            {**env, "PERF_COUNTERS": str(counters)},
        ) as server,
    ):
        http_json(f"{emulator_url}/_emulator/control", {"auto_login": AUTO_LOGIN_USER})
        yield BrokerSetup(server, emu, secret, counters)


def set_latency(setup: BrokerSetup, milliseconds: int) -> None:
    http_json(f"{setup.emulator.url}/_emulator/control", {"latency_ms": milliseconds})


def emulator_requests(setup: BrokerSetup) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = http_json(f"{setup.emulator.url}/_emulator/requests")
    return result


def clear_emulator_requests(setup: BrokerSetup) -> None:
    http_json(f"{setup.emulator.url}/_emulator/requests", method="DELETE")
