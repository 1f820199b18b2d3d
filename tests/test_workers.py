"""``serve`` with ``server.workers: 2``: real processes on one port (broker/workers.py).

Logins cross workers (their state is in the shared database), a worker that dies is
replaced, SIGTERM stops everything with status 0, the death of the parent takes the
workers with it, a metrics scrape from any worker counts every worker's logins, and the
in-memory rate limits hold for the instance as a whole, whichever worker answers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from broker.emulator import EmulatorSettings, create_emulator_app
from broker.web.ratelimit import AUTHORIZE_PER_IP
from broker.web.ratelimit_shared import DEFAULT_SLOTS
from tests.conftest import APP_ID
from tests.flows import follow_until, query_of
from tests.servers import Emulator, free_port, serve
from tests.web.test_ratelimit import fresh_window

REDIRECT_URI = "http://127.0.0.1:9/workers/callback"
BOUND = 30.0  # seconds: a bound exists, not a speed assertion

CONFIG = """\
issuer: http://127.0.0.1:{port}
server: {{host: 127.0.0.1, port: {port}, workers: 2, threads: 8, shutdown_timeout: 5}}
storage: {{url: "sqlite:///broker.sqlite3"}}
keys: {{dir: keys}}
metrics: {{port: {metrics_port}}}
upstream:
  qq:
    app_id: "{app_id}"
    app_key: ${{QQ_APP_KEY}}
    base_url: {emulator}
rate_limits: {{enabled: {rate_limits}}}
clients:
  - client_id: rp
    client_secret: ${{RP_SECRET}}
    redirect_uris: [{redirect_uri}]
"""


@dataclass
class Pool:
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    emulator: Emulator
    secret: str

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def owner(self, connection: socket.socket) -> int | None:
        """The worker holding the server side of ``connection`` (from /proc: its inode)."""
        here = connection.getsockname()[1]
        inodes = [
            fields[9]
            for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines())
            if fields[1].endswith(f":{self.port:04X}") and fields[2].endswith(f":{here:04X}")
        ]
        for pid in self.workers():
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in {f"socket:[{inode}]" for inode in inodes}:
                        return pid
        return None

    def login(self) -> None:
        """authorize → emulator (auto-login) → callback → token, as a fresh browser."""
        verifier = secrets.token_urlsafe(48)
        params = authorize_params(verifier)
        request = requests.Request("GET", f"{self.issuer}/authorize", params=params).prepare()
        assert request.url is not None
        back = follow_until(requests.Session(), request.url, REDIRECT_URI)
        code = query_of(back.headers["Location"])["code"]
        data = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": REDIRECT_URI, "code_verifier": verifier}  # fmt: skip
        token = requests.post(f"{self.issuer}/token", data=data, auth=("rp", self.secret),
                              timeout=BOUND)  # fmt: skip
        assert token.status_code == 200, token.text

    def completed_logins(self) -> float:
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=BOUND).text
        for family in text_string_to_metric_families(text):
            if family.name == "qq_oidc_broker_logins_completed":
                return sum(
                    sample.value for sample in family.samples if sample.name.endswith("_total")
                )
        return 0.0


def authorize_params(verifier: str) -> dict[str, str]:
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return {
        "response_type": "code",
        "client_id": "rp",
        "redirect_uri": REDIRECT_URI,
        "scope": "openid profile",
        "state": "s",
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def running_pool(tmp_path: Path, *, rate_limits: bool = False) -> Iterator[Pool]:
    port, metrics_port, app_key = free_port(), free_port(), secrets.token_hex(16)
    settings = EmulatorSettings(
        app_id=APP_ID, app_key=app_key, callbacks=[f"http://127.0.0.1:{port}/qq/callback"]
    )
    emulator = Emulator(serve(create_emulator_app(settings)))
    emulator.control(auto_login="zhangsan")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(port=port, metrics_port=metrics_port, app_id=APP_ID,
                                    emulator=emulator.url, redirect_uri=REDIRECT_URI,
                                    rate_limits=str(rate_limits).lower()))  # fmt: skip
    secret = secrets.token_urlsafe(24)
    temp = tmp_path / "tmp"  # where the parent puts the metrics and rate-limit directories
    temp.mkdir()
    env = {**os.environ, "QQ_APP_KEY": app_key, "RP_SECRET": secret, "TMPDIR": str(temp)}
    for name in ("BROKER_CONFIG", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--config", str(config)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    running = Pool(proc, port, metrics_port, emulator, secret)
    try:
        wait_until(lambda: answers(f"{running.issuer}/healthz"), "the workers to answer")
        wait_until(lambda: len(running.workers()) == 2, "two workers")
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=BOUND)
        emulator.served.stop()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    with running_pool(tmp_path) as running:
        yield running


def test_logins_cross_workers_and_every_worker_counts_in_the_metrics(pool: Pool) -> None:
    for _ in range(6):
        pool.login()
    # Whichever worker answers the scrape, it merges both workers' counters.
    assert {pool.completed_logins() for _ in range(6)} == {6.0}


def test_a_worker_that_dies_is_replaced_and_sigterm_stops_everything(pool: Pool) -> None:
    first, second = pool.workers()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: first not in pool.workers() and len(pool.workers()) == 2, "a new worker")
    assert second in pool.workers()
    pool.login()
    workers = pool.workers()
    pool.proc.send_signal(signal.SIGTERM)
    out, _ = pool.proc.communicate(timeout=BOUND)
    assert pool.proc.returncode == 0, out
    assert "exited (killed by SIGKILL); starting another" in out
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    assert not answers(f"{pool.issuer}/healthz")


def test_the_workers_die_with_their_parent(pool: Pool) -> None:
    workers = pool.workers()
    pool.proc.kill()  # SIGKILL: no chance to stop them
    pool.proc.communicate(timeout=BOUND)
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), "orphans gone")
    assert not answers(f"{pool.issuer}/healthz")


def test_in_memory_rate_limits_hold_across_the_workers(tmp_path: Path) -> None:
    """rate_limits.storage: memory with two workers: one table for both, so /authorize
    takes exactly its limit per IP from the instance, not the limit once per worker."""
    with running_pool(tmp_path, rate_limits=True) as pool:
        (table,) = (tmp_path / "tmp").glob("qq-oidc-broker-ratelimit-*/counters")
        assert table.stat().st_size == 64 + DEFAULT_SLOTS * 32  # fixed: bounded memory
        query = urlencode(authorize_params(secrets.token_urlsafe(48)))
        limit = AUTHORIZE_PER_IP.requests
        fresh_window(AUTHORIZE_PER_IP.window, margin=20)
        statuses, owners = [], set()
        for _ in range(limit + 30):  # a fresh connection each: the kernel picks the worker
            connection = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=BOUND)
            connection.request("GET", f"/authorize?{query}")
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            owners.add(pool.owner(connection.sock))
            connection.close()
        assert owners == set(pool.workers())  # both workers answered ...
        assert statuses == [302] * limit + [429] * 30  # ... and together let the limit through
        pool.proc.send_signal(signal.SIGTERM)
        out, _ = pool.proc.communicate(timeout=BOUND)
    assert pool.proc.returncode == 0, out
    # Crossing the limit is logged once per window for the instance, not once per worker.
    assert out.count(f"rate limit: more than {limit} /authorize requests") == 1, out
    assert list((tmp_path / "tmp").iterdir()) == []  # the parent removed the table (and metrics)
