"""Prometheus metrics, black-box: real logins through the emulator, then a scrape.

Every count is read as a difference between two scrapes, parsed with prometheus_client's
own text parser, so the tests hold whatever else ran on the same broker before.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from broker.emulator import EmulatorSettings, create_emulator_app
from tests.conftest import APP_ID, Broker, Emulator, Pair, start_pair
from tests.flows import authorize_url
from tests.servers import free_port, serve

TIMEOUT = 15
REPO = Path(__file__).resolve().parent.parent
METRICS_TOKEN = secrets.token_urlsafe(24)
P = "qq_oidc_broker_"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --------------------------------------------------------------------------- helpers


@dataclass
class Walk:
    """One trip through /authorize, QQ (the emulator) and /qq/callback, as a browser."""

    browser: requests.Session
    verifier: str
    params: dict[str, str]
    locations: list[str] = field(default_factory=list)

    @property
    def rp_query(self) -> dict[str, str]:
        return _flat_query(self.locations[-1])

    @property
    def callback_query(self) -> dict[str, str]:
        """The query QQ sent back to the broker: QQ's code and the broker's QQ state."""
        found = [u for u in self.locations if "/qq/callback" in u]
        return _flat_query(found[-1]) if found else {}


def _flat_query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def walk_login(
    broker: Broker | Site,
    emulator: Emulator,
    client_id: str = "rp-basic",
    *,
    user: str = "zhangsan",
    scope: str = "openid",
    browser: requests.Session | None = None,
) -> Walk:
    """Follow the redirects by hand until the relying party's redirect URI (never fetched)."""
    emulator.control(auto_login=user)
    redirect_uri = broker.clients[client_id]["redirect_uri"]
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": secrets.token_urlsafe(12),
        "nonce": secrets.token_urlsafe(12),
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    walk = Walk(browser or requests.Session(), verifier, params)
    response = walk.browser.get(
        authorize_url(broker.issuer, **params), allow_redirects=False, timeout=30
    )
    for _ in range(8):
        location = response.headers.get("Location")
        if response.status_code not in (302, 303) or not location:
            break
        walk.locations.append(location)
        if location.startswith(redirect_uri.split("?")[0]):
            break
        response = walk.browser.get(location, allow_redirects=False, timeout=30)
    return walk


def token_request(broker: Broker | Site, client_id: str, data: dict[str, str]) -> requests.Response:
    secret = broker.clients[client_id]["client_secret"]
    return requests.post(
        f"{broker.issuer}/token", data=data, auth=(client_id, secret), timeout=TIMEOUT
    )


def redeem(broker: Broker | Site, walk: Walk) -> dict[str, Any]:
    client_id = walk.params["client_id"]
    response = token_request(
        broker,
        client_id,
        {
            "grant_type": "authorization_code",
            "code": walk.rp_query["code"],
            "redirect_uri": walk.params["redirect_uri"],
            "code_verifier": walk.verifier,
        },
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def scrape(broker: Broker, token: str = METRICS_TOKEN) -> Samples:
    response = requests.get(
        f"{broker.issuer}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    return parse_samples(response.text)


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started = start_pair(tmp_path_factory.mktemp("metrics"), metrics={"token": METRICS_TOKEN})
    yield started
    started.stop()


@pytest.fixture
def qq(pair: Pair) -> Emulator:
    pair.emulator.reset()
    return pair.emulator


# --------------------------------------------------------------------------- logins


def test_a_login_counts_started_completed_tokens_and_qq_latency(pair: Pair, qq: Emulator) -> None:
    broker = pair.broker
    before = scrape(broker)
    walk = walk_login(broker, qq)
    assert "code" in walk.rp_query, walk.locations
    redeem(broker, walk)
    after = scrape(broker)

    assert delta(before, after, P + "logins_started_total", client_id="rp-basic") == 1
    assert delta(before, after, P + "logins_completed_total", client_id="rp-basic") == 1
    issued = P + "tokens_issued_total"
    assert delta(before, after, issued, grant_type="authorization_code", client_id="rp-basic") == 1
    assert delta(before, after, P + "qq_calls_total", call="exchange", outcome="ok") == 1
    histogram = P + "qq_call_duration_seconds"
    assert delta(before, after, histogram + "_count", call="exchange") == 1
    assert delta(before, after, histogram + "_bucket", call="exchange", le="+Inf") == 1
    # A real HTTP round trip took some time, and less than the connector's own timeout.
    assert 0 < delta(before, after, histogram + "_sum", call="exchange") < 60


def test_a_qq_error_counts_the_failure_reason_and_the_qq_code(pair: Pair, qq: Emulator) -> None:
    broker = pair.broker
    qq.control(faults={"get_user_info": "error:100016"})
    before = scrape(broker)
    walk = walk_login(broker, qq)
    after = scrape(broker)

    assert walk.rp_query.get("error") == "server_error", walk.locations
    failed = P + "logins_failed_total"
    assert delta(before, after, failed, client_id="rp-basic", reason="upstream_token_expired") == 1
    assert delta(before, after, P + "logins_completed_total", client_id="rp-basic") == 0
    assert delta(before, after, P + "qq_errors_total", endpoint="get_user_info", code="100016") == 1
    assert delta(before, after, P + "qq_calls_total", call="exchange", outcome="rejected") == 1
    assert delta(before, after, P + "qq_call_duration_seconds_count", call="exchange") == 1


def test_an_unreachable_qq_counts_as_unavailable(pair: Pair, qq: Emulator) -> None:
    broker = pair.broker
    qq.control(faults={"token": "http_500"})
    before = scrape(broker)
    walk = walk_login(broker, qq)
    after = scrape(broker)

    assert walk.rp_query.get("error") == "temporarily_unavailable", walk.locations
    reason = "upstream_unavailable"
    assert delta(before, after, P + "logins_failed_total", client_id="rp-basic", reason=reason) == 1
    assert delta(before, after, P + "qq_calls_total", call="exchange", outcome="unavailable") == 1


def test_a_cancel_at_qq_and_a_broken_callback_count_by_reason(pair: Pair, qq: Emulator) -> None:
    broker = pair.broker
    qq.control(cancel_mode="redirect")  # the WAP flow: back to the broker with usercancel=1
    before = scrape(broker)
    walk_login(broker, qq, user="cancel")
    response = requests.get(f"{broker.issuer}/qq/callback?code=abc", timeout=TIMEOUT)
    after = scrape(broker)

    assert response.status_code == 400
    failed = P + "logins_failed_total"
    assert delta(before, after, failed, client_id="rp-basic", reason="upstream_cancelled") == 1
    assert delta(before, after, failed, client_id="unknown", reason="callback_no_state") == 1
    # A cancel never reached QQ's API: no call was counted for it.
    assert delta(before, after, P + "qq_call_duration_seconds_count", call="exchange") == 0


def test_refresh_issuance_and_reuse_detection(pair: Pair, qq: Emulator) -> None:
    broker = pair.broker
    tokens = redeem(broker, walk_login(broker, qq, "rp-refresh", scope="openid offline_access"))
    before = scrape(broker)
    grant = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    first = token_request(broker, "rp-refresh", grant)
    replay = token_request(broker, "rp-refresh", grant)
    after = scrape(broker)

    assert first.status_code == 200, first.text
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    issued = P + "tokens_issued_total"
    assert delta(before, after, issued, grant_type="refresh_token", client_id="rp-refresh") == 1
    assert delta(before, after, P + "refresh_token_reuse_total", client_id="rp-refresh") == 1


def test_signing_keys_are_reported_per_algorithm_and_state(pair: Pair) -> None:
    samples = scrape(pair.broker)
    for alg in ("RS256", "ES256", "EdDSA"):
        assert value(samples, P + "signing_keys", alg=alg, state="active") == 1
        assert (P + "signing_keys", (("alg", alg), ("state", "withdrawn"))) in samples
        assert value(samples, P + "signing_keys_published", alg=alg) >= 1


def test_labels_never_carry_client_chosen_strings(pair: Pair, qq: Emulator) -> None:
    broker = pair.broker
    chosen = "attacker-" + secrets.token_hex(6)
    requests.get(
        authorize_url(broker.issuer, client_id=chosen, response_type="code", scope="openid"),
        timeout=TIMEOUT,
    )
    requests.post(f"{broker.issuer}/token", auth=(chosen, "x"), timeout=TIMEOUT)
    requests.get(f"{broker.issuer}/qq/callback?state={chosen}&code=abc", timeout=TIMEOUT)
    text = requests.get(
        f"{broker.issuer}/metrics",
        headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        timeout=TIMEOUT,
    ).text
    assert chosen not in text
    for labels in (dict(k[1]) for k in parse_samples(text)):
        if "client_id" in labels:
            assert labels["client_id"] in {*broker.clients, "unknown"}


# --------------------------------------------------------------------------- exposure


def test_metrics_on_the_main_port_need_the_token(pair: Pair, broker: Broker) -> None:
    url = f"{pair.broker.issuer}/metrics"
    missing = requests.get(url, timeout=TIMEOUT)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in (f"Bearer {METRICS_TOKEN}x", f"Bearer {METRICS_TOKEN[:-1]}", "Bearer", "Basic x"):
        response = requests.get(url, headers={"Authorization": wrong}, timeout=TIMEOUT)
        assert response.status_code in (401, 403), wrong
        assert P not in response.text
    good = requests.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=TIMEOUT)
    assert good.status_code == 200
    assert good.headers["Content-Type"].startswith("text/plain")
    assert good.headers["Cache-Control"] == "no-store"
    assert P + "logins_started" in good.text
    # The session broker has no metrics token: no /metrics on its main port at all.
    no_token = requests.get(
        f"{broker.issuer}/metrics",
        headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        timeout=TIMEOUT,
    )
    assert no_token.status_code == 404


SERVE_CONFIG = """\
issuer: http://127.0.0.1:{port}
server: {{host: 127.0.0.1, port: {port}, shutdown_timeout: 5}}
rate_limits: {{enabled: false}}
upstream:
  qq:
    app_id: "{app_id}"
    app_key: ${{QQ_APP_KEY}}
    base_url: {qq_url}
metrics: {{host: 127.0.0.1, port: {metrics_port}}}
logging: {{format: json, level: {level}{extra_logging}}}
clients:
  - client_id: rp-basic
    client_secret: ${{RP_SECRET}}
    redirect_uris: [http://127.0.0.1:9/basic/callback]
"""
RP_CALLBACK = "http://127.0.0.1:9/basic/callback"


@dataclass
class Site:
    """What a browser walk needs of a broker: where it is and its clients' registrations."""

    issuer: str
    clients: dict[str, dict[str, Any]]


@dataclass
class ServeProcess:
    """``qq-oidc-broker serve`` in a subprocess, with an in-process emulator as QQ."""

    proc: subprocess.Popen[str]
    site: Site
    emulator: Emulator
    metrics_port: int
    app_key: str
    output: str = ""

    def stop(self) -> str:
        """SIGTERM, wait for the drain, and return everything the process wrote."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.output = self.proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output = self.proc.communicate(timeout=10)[0]
        self.emulator.served.stop()
        return self.output


def serve_env(**extra: str) -> dict[str, str]:
    unwanted = ("BROKER_CONFIG", "PROMETHEUS_MULTIPROC_DIR")
    return {**{k: v for k, v in os.environ.items() if k not in unwanted}, **extra}


def start_serve(tmp_path: Path, level: str = "INFO", log_identifiers: bool = False) -> ServeProcess:
    """Write a config, start ``serve`` and wait until its discovery document answers."""
    port, metrics_port = free_port(), free_port()
    app_key, rp_secret = secrets.token_hex(16), secrets.token_urlsafe(24)
    settings = EmulatorSettings(
        app_id=APP_ID,
        app_key=app_key,
        callbacks=[f"http://127.0.0.1:{port}/qq/callback"],
        unionid_enabled=True,
    )
    emulator = Emulator(serve(create_emulator_app(settings)))
    text = SERVE_CONFIG.format(
        port=port,
        app_id=APP_ID,
        qq_url=emulator.url,
        metrics_port=metrics_port,
        level=level,
        extra_logging=", log_identifiers: true" if log_identifiers else "",
    )
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--config", str(path)],
        cwd=tmp_path,
        env=serve_env(QQ_APP_KEY=app_key, RP_SECRET=rp_secret),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    registration = {"client_secret": rp_secret, "redirect_uri": RP_CALLBACK}
    site = Site(f"http://127.0.0.1:{port}", {"rp-basic": registration})
    started = ServeProcess(proc, site, emulator, metrics_port, app_key)
    _wait_until_up(started)
    return started


def _wait_until_up(started: ServeProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"{started.site.issuer}/.well-known/openid-configuration"
    while True:
        if started.proc.poll() is not None:
            raise AssertionError(f"serve exited: {started.stop()}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"serve did not come up: {started.stop()}")
        time.sleep(0.2)


def test_serve_runs_a_separate_metrics_listener_that_stops_with_it(tmp_path: Path) -> None:
    started = start_serve(tmp_path)
    metrics_url = f"http://127.0.0.1:{started.metrics_port}"
    try:
        walk = walk_login(started.site, started.emulator)
        assert "code" in walk.rp_query, walk.locations
        scraped = requests.get(f"{metrics_url}/metrics", timeout=TIMEOUT)
        assert scraped.status_code == 200
        samples = parse_samples(scraped.text)
        assert value(samples, P + "logins_completed_total", client_id="rp-basic") == 1
        assert value(samples, P + "signing_keys", alg="RS256", state="active") == 1
        assert requests.get(f"{metrics_url}/", timeout=TIMEOUT).status_code == 404
        assert requests.post(f"{metrics_url}/metrics", timeout=TIMEOUT).status_code == 405
        # No token configured: the main port has no /metrics.
        main = requests.get(f"{started.site.issuer}/metrics", timeout=TIMEOUT)
        assert main.status_code == 404
    finally:
        output = started.stop()
    assert started.proc.returncode == 0, output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{metrics_url}/metrics", timeout=TIMEOUT)
    assert "Traceback" not in output and started.app_key not in output


def test_a_taken_metrics_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = free_port()
        path = tmp_path / "config.yaml"
        path.write_text(
            SERVE_CONFIG.format(
                port=port,
                app_id=APP_ID,
                qq_url="http://127.0.0.1:9",
                metrics_port=taken.getsockname()[1],
                level="INFO",
                extra_logging="",
            ),
            encoding="utf-8",
        )
        env = serve_env(QQ_APP_KEY=secrets.token_hex(16), RP_SECRET=secrets.token_urlsafe(24))
        result = subprocess.run(
            [sys.executable, "-m", "broker", "serve", "--config", str(path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("qq-oidc-broker: ") and "metrics" in last, result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- multi-process

WORKER = """
import sys
from broker.metrics import Metrics
metrics = Metrics(clients={"rp-basic": object()})
metrics.login_started("rp-basic")
metrics.qq_call("exchange", "ok", 0.2)
"""

SCRAPER = """
import json, sys
from pathlib import Path
from broker.app import create_app
from broker.config import parse_config
config = parse_config(json.loads(sys.argv[1]), source="<test>", base_dir=Path(sys.argv[2]))
app = create_app(config)
client = app.test_client()
response = client.get(
    "/metrics",
    base_url="http://127.0.0.1:8000",
    headers={"Authorization": "Bearer " + sys.argv[3]},
)
app.extensions["qq_oidc_broker.housekeeper"].stop()
print(response.status_code)
print(response.get_data(as_text=True))
"""


def _python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_multiprocess_mode_merges_the_workers_counters(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR: each worker writes its own file; a scrape adds them up."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    for _ in range(2):  # two "workers", one after the other, each its own process
        worker = _python(WORKER, env)
        assert worker.returncode == 0, worker.stderr
    assert len(list(directory.glob("*.db"))) >= 2
    config = {
        "issuer": "http://127.0.0.1:8000",
        "storage": {"url": "sqlite:///broker.sqlite3"},
        "upstream": {"qq": {"app_id": APP_ID, "app_key": secrets.token_hex(16)}},
        "metrics": {"token": METRICS_TOKEN},
        "clients": [
            {
                "client_id": "rp-basic",
                "client_secret": secrets.token_urlsafe(24),
                "redirect_uris": ["http://127.0.0.1:9/cb"],
            }
        ],
    }
    scraped = _python(SCRAPER, env, json.dumps(config), str(tmp_path), METRICS_TOKEN)
    assert scraped.returncode == 0, scraped.stderr
    status, _, body = scraped.stdout.partition("\n")
    assert status == "200", scraped.stdout
    samples = parse_samples(body)
    assert value(samples, P + "logins_started_total", client_id="rp-basic") == 2
    assert value(samples, P + "qq_call_duration_seconds_count", call="exchange") == 2
    assert value(samples, P + "signing_keys", alg="RS256", state="active") == 1


def test_a_missing_multiprocess_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        SERVE_CONFIG.format(
            port=free_port(),
            app_id=APP_ID,
            qq_url="http://127.0.0.1:9",
            metrics_port=0,
            level="INFO",
            extra_logging="",
        ),
        encoding="utf-8",
    )
    env = serve_env(
        QQ_APP_KEY=secrets.token_hex(16),
        RP_SECRET=secrets.token_urlsafe(24),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "missing"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--config", str(path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("qq-oidc-broker: metrics: PROMETHEUS_MULTIPROC_DIR"), result.stderr
    assert "Traceback" not in result.stderr
