"""DO-03 / DESIGN.md rate_limits: bursts get 429, brute force is cut off, counters are shared.

Brokers run as real HTTP servers. Most take small limits injected through
``create_app(config, rate_limits=...)``; one runs the defaults through ``start_pair``.
Limits with a long window are burst right after a window boundary (``fresh_window``),
so a burst never straddles two windows. Short windows are only used to show a reset,
and the test waits for the ``Retry-After`` the broker announces.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask

from broker.app import create_app, unenforced_settings
from broker.config import ConfigError, RateLimitConfig, parse_config
from broker.web.ratelimit import (
    FAILURES_PER_IP,
    KEY_PREFIX,
    REDIS_RETRY_SECONDS,
    Hit,
    Limit,
    MemoryCounters,
    RateLimits,
    RedisCounters,
    install_rate_limiter,
)
from broker.web.ratelimit_shared import PROBE, SharedCounters, SharedTableError, create_table
from tests.conftest import APP_ID, Broker, broker_config, start_pair
from tests.servers import free_port, serve
from tests.web.test_bad_input import valid_params

REDIS_URL = "redis://127.0.0.1:6379/0"
LONG = 300  # seconds: a window no test outlives
GENEROUS = Limit(1000, LONG)
SMALL = RateLimits(
    authorize=GENEROUS,
    callback=GENEROUS,
    endpoint=GENEROUS,
    token_client=GENEROUS,
    failures=GENEROUS,
)


# --------------------------------------------------------------------------- helpers


@dataclass
class Served:
    broker: Broker
    app: Any

    def stop(self) -> None:
        self.broker.served.stop()


BrokerFactory = Callable[..., Served]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start brokers with injected limits; the QQ upstream is never contacted."""
    started: list[Served] = []

    def factory(
        limits: RateLimits,
        *,
        storage: str = "memory",
        enabled: bool = True,
        shared: Path | None = None,
    ) -> Served:
        base = tmp_path / f"broker-{len(started)}"
        base.mkdir()
        port = free_port()
        config = broker_config(
            base,
            f"http://127.0.0.1:{port}",
            "http://127.0.0.1:9",
            secrets.token_hex(16),
            rate_limits={"enabled": enabled, "storage": storage},
        )
        app = create_app(config, rate_limits=limits, shared_counters=shared)
        served = serve(app, port=port)
        clients = {
            c.client_id: {"client_secret": c.client_secret, "redirect_uri": c.redirect_uris[0]}
            for c in config.clients
        }
        started.append(Served(Broker(served, config, clients), app))
        return started[-1]

    yield factory
    for served in started:
        served.stop()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of our own on the real Redis, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as err:
        pytest.skip(f"no Redis at {REDIS_URL}: {err}")
    prefix = f"{KEY_PREFIX}test-{secrets.token_hex(6)}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def fresh_window(window: int, margin: float = 5.0) -> None:
    """Wait for the next window when the current one is about to end (a burst must fit)."""
    remaining = window - time.time() % window
    if remaining < min(margin, window):
        time.sleep(remaining + 0.05)


def authorize(broker: Broker) -> requests.Response:
    return requests.get(
        f"{broker.issuer}/authorize",
        params=valid_params(broker),
        headers={"Accept-Language": "en"},
        allow_redirects=False,
        timeout=5,
    )


def token(
    broker: Broker, client_id: str = "rp-basic", secret: str | None = None
) -> requests.Response:
    """A code exchange with a made-up code: 400 invalid_grant unless the secret is wrong."""
    secret = secret if secret is not None else broker.clients[client_id]["client_secret"]
    data = {
        "grant_type": "authorization_code",
        "code": secrets.token_urlsafe(32),
        "redirect_uri": broker.clients[client_id]["redirect_uri"],
        "code_verifier": secrets.token_urlsafe(48),
    }
    if client_id == "rp-post":
        data.update(client_id=client_id, client_secret=secret)
        return requests.post(f"{broker.issuer}/token", data=data, timeout=5)
    return requests.post(f"{broker.issuer}/token", data=data, auth=(client_id, secret), timeout=5)


def machine(broker: Broker, path: str) -> requests.Response:
    """A well-authenticated request to /token, /revoke or /introspect."""
    if path == "/token":
        return token(broker)
    return requests.post(
        f"{broker.issuer}{path}",
        data={"token": secrets.token_urlsafe(32)},
        auth=("rp-basic", broker.clients["rp-basic"]["client_secret"]),
        timeout=5,
    )


def assert_json_429(response: requests.Response, window: int) -> None:
    assert response.status_code == 429
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {
        "error": "temporarily_unavailable",
        "error_description": "Too many requests.",
    }
    assert 1 <= int(response.headers["Retry-After"]) <= window
    assert response.headers["Cache-Control"] == "no-store"


def assert_html_429(response: requests.Response, window: int) -> None:
    assert response.status_code == 429
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Location" not in response.headers
    assert "Too many requests from your network" in response.text
    assert 1 <= int(response.headers["Retry-After"]) <= window


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "broker.ratelimit" and r.levelno == logging.WARNING and text in r.getMessage()
    ]


# --------------------------------------------------------------------------- browser endpoints


def test_authorize_burst_gets_an_html_429_with_retry_after(
    start: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.ratelimit")
    broker = start(RateLimits(authorize=Limit(3, LONG), callback=GENEROUS)).broker
    fresh_window(LONG)
    assert [authorize(broker).status_code for _ in range(3)] == [302, 302, 302]
    for _ in range(3):
        assert_html_429(authorize(broker), LONG)
    # Logged once per window and key, however many requests were refused.
    logged = warnings_about(caplog, "/authorize")
    assert len(logged) == 1
    assert "ip 127.0.0.1" in logged[0]


def test_callback_has_its_own_per_ip_limit(start: BrokerFactory) -> None:
    broker = start(RateLimits(authorize=Limit(2, LONG), callback=Limit(2, LONG))).broker
    fresh_window(LONG)
    callback = f"{broker.issuer}/qq/callback"
    answers = [requests.get(callback, timeout=5).status_code for _ in range(3)]
    assert answers == [400, 400, 429]  # a bare callback is a 400 page, then the limit
    assert authorize(broker).status_code == 302  # /authorize still has its own counter
    page = requests.get(callback, headers={"Accept-Language": "zh-CN"}, timeout=5)
    assert page.status_code == 429
    assert "请求过于频繁" in page.text


def test_forwarded_headers_do_not_give_a_fresh_counter(
    start: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """No trusted-proxy setting yet: X-Forwarded-For is anyone's to send, so it is ignored."""
    caplog.set_level(logging.WARNING, logger="broker.ratelimit")
    served = start(RateLimits(authorize=Limit(2, LONG)))
    broker = served.broker
    fresh_window(LONG)
    answers = [
        requests.get(
            f"{broker.issuer}/authorize",
            params=valid_params(broker),
            headers={"X-Forwarded-For": f"198.51.100.{n}"},
            allow_redirects=False,
            timeout=5,
        ).status_code
        for n in range(4)
    ]
    assert answers == [302, 302, 429, 429]
    # waitress drops untrusted proxy headers; a WSGI server that passes them on gets a
    # one-time hint that every client behind the proxy shares one counter.
    client = served.app.test_client()
    for n in range(3):
        client.get(
            "/authorize", base_url=broker.issuer, headers={"X-Forwarded-For": f"198.51.100.{n}"}
        )
    assert len(warnings_about(caplog, "X-Forwarded-For")) == 1


def test_ipv6_clients_are_counted_per_64(start: BrokerFactory) -> None:
    served = start(RateLimits(authorize=Limit(1, LONG)))
    fresh_window(LONG)
    client = served.app.test_client()
    params = valid_params(served.broker)

    def status(address: str) -> int:
        response = client.get(
            "/authorize",
            base_url=served.broker.issuer,
            query_string=params,
            environ_base={"REMOTE_ADDR": address},
        )
        return response.status_code

    assert status("2001:db8:0:1::1") == 302
    assert status("2001:db8:0:1::2") == 429  # same /64: same counter
    assert status("2001:db8:0:2::1") == 302  # another /64
    assert status("192.0.2.7") == 302
    assert status("::ffff:192.0.2.7") == 429  # IPv4-mapped is the IPv4 address


def test_window_resets(start: BrokerFactory) -> None:
    broker = start(RateLimits(authorize=Limit(2, 1))).broker
    refused = None
    for _ in range(5):  # 5 requests in < 2 windows: one window gets more than 2
        response = authorize(broker)
        if response.status_code == 429:
            refused = response
            break
        assert response.status_code == 302
    assert refused is not None, "the burst was never refused"
    time.sleep(int(refused.headers["Retry-After"]) + 0.05)
    assert authorize(broker).status_code == 302


# --------------------------------------------------------------------------- machine endpoints


@pytest.mark.parametrize("path", ["/token", "/revoke", "/introspect"])
def test_machine_endpoint_burst_gets_a_json_429(start: BrokerFactory, path: str) -> None:
    broker = start(RateLimits(endpoint=Limit(3, LONG), failures=GENEROUS)).broker
    fresh_window(LONG)
    first = [machine(broker, path) for _ in range(3)]
    assert all(r.status_code in (200, 400) for r in first), [r.text for r in first]
    assert_json_429(machine(broker, path), LONG)
    other = "/revoke" if path != "/revoke" else "/introspect"
    assert machine(broker, other).status_code == 200  # each endpoint counts on its own


def test_token_limit_is_per_client_id(start: BrokerFactory) -> None:
    broker = start(
        RateLimits(endpoint=GENEROUS, token_client=Limit(3, LONG), failures=GENEROUS)
    ).broker
    fresh_window(LONG)
    assert [token(broker, "rp-basic").status_code for _ in range(3)] == [400, 400, 400]
    assert_json_429(token(broker, "rp-basic"), LONG)
    # Same IP, another client (named in the form, not the Basic header): its own counter.
    assert [token(broker, "rp-post").status_code for _ in range(3)] == [400, 400, 400]
    assert_json_429(token(broker, "rp-post"), LONG)


@pytest.mark.parametrize("failure", ["wrong-secret", "unknown-client", "bad-code"])
def test_brute_force_is_cut_off_after_the_failure_threshold(
    start: BrokerFactory, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.ratelimit")
    broker = start(RateLimits(endpoint=GENEROUS, failures=Limit(5, LONG))).broker
    fresh_window(LONG)
    guesses = [f"guess-{secrets.token_urlsafe(16)}" for _ in range(5)]

    def attempt(guess: str) -> requests.Response:
        if failure == "wrong-secret":
            return token(broker, "rp-basic", guess)
        if failure == "unknown-client":
            return requests.post(
                f"{broker.issuer}/token",
                data={"grant_type": "authorization_code", "code": "x"},
                auth=(f"no-such-{guess}", guess),
                timeout=5,
            )
        return token(broker, "rp-basic")  # right secret, guessed code: invalid_grant

    expected = 400 if failure == "bad-code" else 401
    assert [attempt(g).status_code for g in guesses] == [expected] * 5
    # From now on this IP is refused at every machine endpoint, right credentials or not.
    assert_json_429(token(broker, "rp-basic"), LONG)
    assert_json_429(machine(broker, "/introspect"), LONG)
    assert_json_429(machine(broker, "/revoke"), LONG)
    # ... but logins in the browser are another matter.
    assert authorize(broker).status_code == 302
    logged = warnings_about(caplog, "failed client authentications or invalid grants")
    assert len(logged) == 1 and "ip 127.0.0.1" in logged[0]
    assert not any(g in caplog.text for g in guesses)  # never a secret in the log


def test_successful_requests_are_not_counted_as_failures(start: BrokerFactory) -> None:
    broker = start(RateLimits(endpoint=GENEROUS, failures=Limit(3, LONG))).broker
    fresh_window(LONG)
    answers = [machine(broker, "/revoke").status_code for _ in range(10)]
    answers += [machine(broker, "/introspect").status_code for _ in range(10)]
    assert answers == [200] * 20


def test_default_limits_stop_secret_guessing_at_the_threshold(tmp_path: Path) -> None:
    """The shipped limits, wired from the config alone (start_pair, no injection)."""
    pair = start_pair(tmp_path, rate_limits={"enabled": True})
    try:
        broker = pair.broker
        fresh_window(FAILURES_PER_IP.window)
        answers = [
            token(broker, "rp-basic", f"guess-{n}").status_code
            for n in range(FAILURES_PER_IP.requests + 1)
        ]
        assert answers == [401] * FAILURES_PER_IP.requests + [429]
    finally:
        pair.stop()


# --------------------------------------------------------------------------- switches and storage


def test_disabled_means_no_limiter_at_all(start: BrokerFactory) -> None:
    tiny = Limit(1, LONG)
    served = start(
        RateLimits(authorize=tiny, callback=tiny, endpoint=tiny, token_client=tiny, failures=tiny),
        enabled=False,
    )
    broker = served.broker
    assert "qq_oidc_broker.rate_limiter" not in served.app.extensions
    assert [authorize(broker).status_code for _ in range(5)] == [302] * 5
    assert [token(broker, "rp-basic", "wrong").status_code for _ in range(5)] == [401] * 5
    assert not any("rate_limits" in note for note in unenforced_settings(broker.config))


def test_redis_shares_counters_between_brokers(start: BrokerFactory, redis_prefix: str) -> None:
    limits = RateLimits(authorize=Limit(3, LONG), failures=Limit(2, LONG), key_prefix=redis_prefix)
    first = start(limits, storage=REDIS_URL).broker
    second = start(limits, storage=REDIS_URL).broker
    fresh_window(LONG)
    assert [authorize(first).status_code for _ in range(3)] == [302] * 3
    assert_html_429(authorize(second), LONG)  # the second broker sees the first one's count
    # Failures too: two on one broker, the next request on the other is refused.
    assert token(first, "rp-basic", "wrong").status_code == 401
    assert token(second, "rp-basic", "wrong").status_code == 401
    assert_json_429(token(first), LONG)
    client = redis.Redis.from_url(REDIS_URL)
    keys = sorted(k.decode() for k in client.scan_iter(match=f"{redis_prefix}*"))
    assert any(k.startswith(f"{redis_prefix}authorize:127.0.0.1:") for k in keys), keys
    assert all(0 < client.ttl(k) <= LONG + 1 for k in keys)  # every counter expires
    client.close()


def test_redis_down_still_serves_requests(
    start: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.ratelimit")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    broker = start(RateLimits(authorize=Limit(3, LONG)), storage=dead).broker
    fresh_window(LONG)
    assert [authorize(broker).status_code for _ in range(3)] == [302] * 3
    assert token(broker, "rp-basic", "wrong").status_code == 401
    assert token(broker).status_code == 400
    assert machine(broker, "/introspect").status_code == 200
    # Counting goes on in the process meanwhile, so the brute-force guard is not lost.
    assert_html_429(authorize(broker), LONG)
    logged = warnings_about(caplog, "is unavailable")
    assert len(logged) == 1  # once per outage, not once per request


# --------------------------------------------------------------------------- the memory store


def test_memory_store_stays_bounded_under_many_keys() -> None:
    store = MemoryCounters(max_keys=100)
    far = time.time() + 3600
    for n in range(10_000):
        store.add([Hit(f"ip-{n}", far)])
    assert len(store) == 100
    assert store.add([Hit("ip-9999", far)]) == [2]  # the newest counters survive
    assert store.add([Hit("ip-0", far, amount=0)]) == [0]  # the oldest were evicted
    assert len(store) == 100  # a read does not create a counter


def test_memory_store_drops_expired_windows() -> None:
    now = [1000.0]
    store = MemoryCounters(clock=lambda: now[0])
    for n in range(50):
        store.add([Hit(f"ip-{n}", 1060.0)])
    assert store.add([Hit("ip-1", 1060.0), Hit("ip-1", 1060.0, amount=0)]) == [2, 2]
    now[0] = 1060.0
    assert store.add([Hit("ip-1", 1120.0)]) == [1]  # a new window starts from zero
    assert len(store) == 1
    # A counter that expires behind a longer-lived one is not counted past its end either.
    store.add([Hit("short", 1061.0)])
    now[0] = 1061.0
    assert store.add([Hit("short", 1062.0, amount=0)]) == [0]


def test_redis_outage_warns_once_and_recovers(
    redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.ratelimit")
    now = [0.0]
    counters = RedisCounters(f"redis://127.0.0.1:{free_port()}/0", clock=lambda: now[0])
    key = f"{redis_prefix}outage"
    far = time.time() + LONG
    assert counters.add([Hit(key, far)]) == [1]  # counted in memory
    now[0] += REDIS_RETRY_SECONDS + 1
    assert counters.add([Hit(key, far)]) == [2]  # retried, still down: memory again
    assert len(warnings_about(caplog, "is unavailable")) == 1
    counters._redis = redis.Redis.from_url(REDIS_URL)  # Redis is back
    assert counters.add([Hit(key, far)]) == [3]  # still within the retry pause: memory
    now[0] += REDIS_RETRY_SECONDS + 1
    assert counters.add([Hit(key, far)]) == [1]  # the shared counter, fresh in Redis
    assert any("answers again" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- the workers' table


def _count_in_child(path: Path, inherited: SharedCounters | None, key: str, far: float,
                    hits: int, start: Any, results: Any) -> None:  # fmt: skip
    """A worker: opens the table itself (or uses one opened before the fork), then counts."""
    table = inherited if inherited is not None else SharedCounters(path)
    start.wait()
    results.put([table.add([Hit(key, far)])[0] for _ in range(hits)])


@pytest.mark.parametrize("opened", ["in each process", "before the fork"])
def test_shared_table_counts_exactly_across_processes(tmp_path: Path, opened: str) -> None:
    """Two real processes hammer one key: no update is lost, no count is seen twice."""
    path = create_table(tmp_path / "counters", slots=1024)
    inherited = SharedCounters(path) if opened == "before the fork" else None
    far, hits = time.time() + LONG, 2000
    fork = multiprocessing.get_context("fork")
    start, results = fork.Barrier(2), fork.Queue()
    workers = [
        fork.Process(target=_count_in_child,
                     args=(path, inherited, "ip-1", far, hits, start, results))
        for _ in range(2)
    ]  # fmt: skip
    for worker in workers:
        worker.start()
    seen = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sorted(seen[0] + seen[1]) == list(range(1, 2 * hits + 1))
    assert SharedCounters(path).add([Hit("ip-1", far, amount=0)]) == [2 * hits]


def test_shared_table_windows_expire(tmp_path: Path) -> None:
    now = [1000.0]
    table = SharedCounters(create_table(tmp_path / "counters", slots=256), clock=lambda: now[0])
    for n in range(50):
        table.add([Hit(f"ip-{n}", 1060.0)])
    assert table.add([Hit("ip-1", 1060.0), Hit("ip-1", 1060.0, amount=0)]) == [2, 2]
    assert table.add([Hit("nobody", 1060.0, amount=0)]) == [0]
    assert len(table) == 50  # a read does not create a counter
    now[0] = 1060.0
    assert len(table) == 0
    assert table.add([Hit("ip-1", 1120.0)]) == [1]  # a new window starts from zero
    assert len(table) == 1


def test_shared_table_stays_bounded_and_evicts_expired_then_oldest(tmp_path: Path) -> None:
    far = time.time() + 3600
    table = SharedCounters(create_table(tmp_path / "big", slots=100))
    for n in range(10_000):
        assert table.add([Hit(f"ip-{n}", far)]) == [1]
    assert len(table) == 100  # the file's size is the bound: it never grows
    assert (tmp_path / "big").stat().st_size == 64 + 100 * 32
    assert table.add([Hit("ip-9999", far)]) == [2]  # the newest counter survived

    # One probe run covers a table of PROBE slots: which counter makes room is visible.
    now = [1000.0]
    small = SharedCounters(create_table(tmp_path / "small", slots=PROBE), clock=lambda: now[0])
    for n in range(PROBE):
        small.add([Hit(f"k{n}", 2000.0 + n)])  # k0's window ends first
    small.add([Hit("short", 1001.0)])  # full: evicts k0, the oldest window
    assert small.add([Hit("k0", 2000.0, amount=0)]) == [0]
    assert small.add([Hit("k1", 2001.0, amount=0)]) == [1]
    now[0] = 1001.0  # "short" has expired: its slot goes before any live counter
    small.add([Hit("new", 3000.0)])
    assert small.add([Hit("k1", 2001.0, amount=0)]) == [1]
    assert small.add([Hit("new", 3000.0, amount=0)]) == [1]
    assert len(small) == PROBE


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not a shared rate-limit table (0 bytes, too short)"),
        (b"GIF89a" + bytes(100), "not a shared rate-limit table (unknown header)"),
        ("truncated", "shared rate-limit table is corrupt (1024 bytes where 100 slots need 3264)"),
        ("extended", "shared rate-limit table is corrupt (4096 bytes where 100 slots need 3264)"),
        (None, "cannot open the shared rate-limit table (No such file or directory)"),
    ],
)
def test_shared_table_refuses_a_file_that_is_not_one(
    tmp_path: Path, content: bytes | str | None, problem: str
) -> None:
    path = tmp_path / "counters"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        create_table(path, slots=100)
        os.truncate(path, 1024 if content == "truncated" else 4096)
    with pytest.raises(SharedTableError) as caught:
        SharedCounters(path)
    assert str(caught.value) == f"{path}: {problem}"


def test_brokers_sharing_a_table_count_together(start: BrokerFactory, tmp_path: Path) -> None:
    """What the workers of one ``serve`` do: two apps, one table, one set of limits."""
    table = create_table(tmp_path / "counters")
    limits = RateLimits(authorize=Limit(3, LONG), failures=Limit(2, LONG))
    first = start(limits, shared=table)
    second = start(limits, shared=table)
    assert isinstance(first.app.extensions["qq_oidc_broker.rate_limiter"].counters,
                      SharedCounters)  # fmt: skip
    fresh_window(LONG)
    assert [authorize(first.broker).status_code for _ in range(2)] == [302] * 2
    assert authorize(second.broker).status_code == 302
    assert_html_429(authorize(first.broker), LONG)
    assert_html_429(authorize(second.broker), LONG)
    assert token(second.broker, "rp-basic", "wrong").status_code == 401
    assert token(first.broker, "rp-basic", "wrong").status_code == 401
    assert_json_429(token(second.broker), LONG)


def test_redis_outage_falls_back_to_the_shared_table(tmp_path: Path) -> None:
    table = create_table(tmp_path / "counters")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    limiter = install_rate_limiter(
        Flask("test"), RateLimitConfig(storage=dead), shared_counters=table
    )
    assert limiter is not None and isinstance(limiter.counters, RedisCounters)
    far = time.time() + LONG
    assert limiter.counters.add([Hit("ip-1", far)]) == [1]  # Redis is down: the table
    assert SharedCounters(table).add([Hit("ip-1", far)]) == [2]


# --------------------------------------------------------------------------- config


def _config(storage: str) -> Any:
    return parse_config(
        {
            "issuer": "http://127.0.0.1:8000",
            "upstream": {"qq": {"app_id": APP_ID, "app_key": "k" * 32}},
            "rate_limits": {"storage": storage},
        },
        source="<test>",
        base_dir=Path("/tmp"),
    )


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://:pw@redis.example:6380/2", "redis://localhost"],
)
def test_config_accepts_redis_urls(url: str) -> None:
    assert _config(url).rate_limits.storage == url


@pytest.mark.parametrize(
    "url",
    [
        "memcached://127.0.0.1:11211",
        "redis://",
        "redis://:s3cr3t-pw@127.0.0.1:notaport/0",
        "redis://:s3cr3t-pw@127.0.0.1:6379/db0",
        "postgresql://127.0.0.1/x",
    ],
)
def test_config_refuses_other_storage_urls_without_echoing_them(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(url)
    assert caught.value.path == "rate_limits.storage"
    assert "s3cr3t" not in str(caught.value)
