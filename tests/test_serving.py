"""``qq-oidc-broker serve`` shuts down gracefully: real processes, real signals, with one
process (``server.workers: 1``) and with pre-forked workers (the default on several cores).

A login callback is made slow by the emulator's latency on QQ's token endpoint, so it is
still running when SIGTERM arrives. Time bounds are wide on purpose: these tests check
what happens, not how fast.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from broker.emulator import EmulatorSettings, create_emulator_app
from broker.serving import SAME_STOP_SECONDS
from tests.conftest import APP_ID, Emulator
from tests.servers import free_port, serve

REDIRECT_URI = "http://127.0.0.1:9/serving/callback"
#: How long QQ's token endpoint takes while a test sends its signal (below the broker's
#: 5 s read timeout, so the callback ends normally when it is allowed to finish).
SLOW_TOKEN_MS = 3000
MARGIN = 20.0  # seconds: startup, CI noise; never a speed assertion

CONFIG = """\
issuer: http://127.0.0.1:{port}
server: {{host: 127.0.0.1, port: {port}, shutdown_timeout: {shutdown_timeout}, workers: {workers}}}
storage: {{url: "sqlite:///broker.sqlite3"}}
keys: {{dir: keys}}
upstream:
  qq:
    app_id: "{app_id}"
    app_key: ${{QQ_APP_KEY}}
    base_url: {emulator}
rate_limits: {{enabled: false}}
clients:
  - client_id: rp
    client_secret: ${{RP_SECRET}}
    redirect_uris: [{redirect_uri}]
"""


@dataclass
class Served:
    """A ``qq-oidc-broker serve`` process and its emulator."""

    proc: subprocess.Popen[str]
    port: int
    emulator: Emulator
    output: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def finish(self, timeout: float) -> int:
        """Wait for the exit status; keep what the process printed."""
        out, _ = self.proc.communicate(timeout=timeout)
        self.output.append(out)
        return self.proc.returncode

    @property
    def log(self) -> str:
        return "".join(self.output)


StartServe = Callable[..., Served]


#: One process (waitress alone) and the pre-fork workers (broker/workers.py: the parent
#: passes signals on and keeps the drain's promises), whatever this machine's CPU count.
WORKERS = [pytest.param(1, id="one-process"), pytest.param(2, id="two-workers")]


@pytest.fixture(params=WORKERS)
def start(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartServe]:
    """Start ``serve`` processes (each with its own emulator); killed if still running."""
    started: list[Served] = []
    workers: int = request.param

    def factory(shutdown_timeout: int) -> Served:
        port, app_key = free_port(), secrets.token_hex(16)
        emulator = Emulator(
            serve(
                create_emulator_app(
                    EmulatorSettings(
                        app_id=APP_ID,
                        app_key=app_key,
                        callbacks=[f"http://127.0.0.1:{port}/qq/callback"],
                    )
                )
            )
        )
        config = tmp_path / f"config-{len(started)}.yaml"
        config.write_text(
            CONFIG.format(
                port=port,
                shutdown_timeout=shutdown_timeout,
                workers=workers,
                app_id=APP_ID,
                emulator=emulator.url,
                redirect_uri=REDIRECT_URI,
            ),
            encoding="utf-8",
        )
        env = {**os.environ, "QQ_APP_KEY": app_key, "RP_SECRET": secrets.token_urlsafe(24)}
        env.pop("BROKER_CONFIG", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve", "--config", str(config)],
            cwd=tmp_path,
            start_new_session=True,  # its own process group, for the group-signal test
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        served = Served(proc, port, emulator)
        started.append(served)
        wait_until_up(served)
        return served

    yield factory
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(timeout=10)
        served.emulator.served.stop()


def wait_until_up(served: Served, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{served.issuer}/healthz", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        if served.proc.poll() is not None:
            raise AssertionError(f"serve exited early:\n{served.proc.communicate()[0]}")
        if time.monotonic() > deadline:
            raise AssertionError("serve never came up")
        time.sleep(0.1)


class SlowCallback:
    """A login whose ``/qq/callback`` waits on QQ's slow token endpoint, in a thread."""

    def __init__(self, served: Served) -> None:
        served.emulator.control(auto_login="zhangsan", latency_ms={"token": SLOW_TOKEN_MS})
        browser = requests.Session()
        params = {
            "response_type": "code",
            "client_id": "rp",
            "redirect_uri": REDIRECT_URI,
            "scope": "openid",
            "state": "serving-state",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
        }
        to_qq = browser.get(
            f"{served.issuer}/authorize", params=params, allow_redirects=False, timeout=10
        )
        assert to_qq.status_code == 302, to_qq.text
        back = browser.get(to_qq.headers["Location"], allow_redirects=False, timeout=10)
        callback = back.headers["Location"]
        assert callback.startswith(f"{served.issuer}/qq/callback"), callback
        self.response: requests.Response | None = None
        self.error: Exception | None = None

        def run() -> None:
            try:
                self.response = browser.get(callback, allow_redirects=False, timeout=60)
            except requests.RequestException as err:
                self.error = err

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        # In flight once the broker has called QQ's token endpoint (logged before the delay).
        deadline = time.monotonic() + MARGIN
        while not any(r["endpoint"] == "token" for r in served.emulator.requests()):
            assert time.monotonic() < deadline, "the callback never reached QQ"
            time.sleep(0.05)

    def wait(self) -> None:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def connection_refused(port: int, timeout: float = MARGIN) -> bool:
    """Whether connecting to the port is refused, retrying until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(start: StartServe) -> None:
    served = start(shutdown_timeout=30)
    slow = SlowCallback(served)
    served.proc.send_signal(signal.SIGTERM)

    assert connection_refused(served.port)
    assert served.proc.poll() is None and slow.thread.is_alive()  # refused while draining

    slow.wait()
    assert slow.error is None, slow.error
    assert slow.response is not None and slow.response.status_code == 302
    location = slow.response.headers["Location"]
    assert location.startswith(REDIRECT_URI)
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == ["serving-state"] and query["code"], location

    assert served.finish(timeout=30 + MARGIN) == 0
    assert "SIGTERM: no longer accepting connections" in served.log
    assert "all requests finished" in served.log
    assert "Traceback" not in served.log


def test_shutdown_timeout_cuts_a_request_that_is_still_running(start: StartServe) -> None:
    served = start(shutdown_timeout=1)
    slow = SlowCallback(served)
    sent = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)

    assert served.finish(timeout=1 + MARGIN) == 0
    assert time.monotonic() - sent < 1 + MARGIN
    slow.wait()
    assert slow.response is None and isinstance(slow.error, requests.ConnectionError)
    assert "cutting 1 unfinished request(s)" in served.log
    assert "Traceback" not in served.log


def test_a_second_signal_exits_at_once(start: StartServe) -> None:
    served = start(shutdown_timeout=60)
    SlowCallback(served)
    served.proc.send_signal(signal.SIGINT)
    assert connection_refused(served.port)  # the first signal has been handled
    time.sleep(SAME_STOP_SECONDS + 0.2)  # closer together, two signals are one stop
    served.proc.send_signal(signal.SIGTERM)
    assert served.finish(timeout=MARGIN) == 128 + signal.SIGTERM
    assert "second SIGTERM during shutdown" in served.log


def test_a_stop_sent_to_the_whole_process_group_still_drains(start: StartServe) -> None:
    """systemd's default KillMode=control-group and Ctrl-C signal every process: each
    worker then hears the stop twice (directly and from its parent), which must not
    count as an operator insisting on an immediate exit."""
    served = start(shutdown_timeout=30)
    slow = SlowCallback(served)
    os.killpg(served.proc.pid, signal.SIGTERM)
    slow.wait()
    assert slow.error is None, slow.error
    assert slow.response is not None and slow.response.status_code == 302
    assert served.finish(timeout=30 + MARGIN) == 0
    assert "during shutdown" not in served.log


def test_an_idle_server_stops_on_sigint_with_status_0(start: StartServe) -> None:
    served = start(shutdown_timeout=30)
    keep_alive = requests.Session()  # an idle keep-alive connection must not hold the exit
    assert keep_alive.get(f"{served.issuer}/healthz", timeout=5).ok
    served.proc.send_signal(signal.SIGINT)
    assert served.finish(timeout=MARGIN) == 0
    assert "all requests finished" in served.log


@pytest.mark.parametrize("workers", WORKERS)
def test_a_taken_port_is_one_line_and_exit_2(tmp_path: Path, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(
            CONFIG.format(
                port=port,
                shutdown_timeout=5,
                workers=workers,
                app_id=APP_ID,
                emulator="http://127.0.0.1:9",
                redirect_uri=REDIRECT_URI,
            ),
            encoding="utf-8",
        )
        env = {**os.environ, "QQ_APP_KEY": "0" * 32, "RP_SECRET": "s" * 32}
        result = subprocess.run(
            [sys.executable, "-m", "broker", "serve", "--config", str(config)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
