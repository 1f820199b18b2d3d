"""``server.trusted_proxies``: X-Forwarded-For is believed from trusted peers only.

Unit tests drive the middleware with plain WSGI environs; one integration test runs a
real broker on the same waitress settings ``qq-oidc-broker serve`` uses and shows that
per-IP rate limits count the forwarded client behind a trusted proxy, and the peer
otherwise.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from broker.app import create_app
from broker.serving import bind
from broker.web.proxies import PROXY_ADDR_KEY, trust_forwarded_for
from broker.web.ratelimit import Limit, RateLimits
from tests.conftest import Broker, broker_config
from tests.servers import ServedApp, free_port
from tests.web.test_bad_input import valid_params
from tests.web.test_ratelimit import GENEROUS, LONG, fresh_window

Environ = dict[str, Any]


def run(
    networks: list[str], remote_addr: str, forwarded_for: str | None = None
) -> tuple[Environ, list[bytes]]:
    """Call the middleware once; return the environ the app saw and the body."""
    seen: list[Environ] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(dict(environ))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    environ: Environ = {"REMOTE_ADDR": remote_addr, "PATH_INFO": "/"}
    if forwarded_for is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded_for
    body = list(trust_forwarded_for(app, networks)(environ, lambda *args: None))
    return seen[0], body


def client_of(networks: list[str], remote_addr: str, forwarded_for: str | None) -> str:
    return str(run(networks, remote_addr, forwarded_for)[0]["REMOTE_ADDR"])


PROXY_NETS = ["10.0.0.0/8", "192.168.1.1/32"]


def test_no_trusted_proxies_returns_the_app_itself() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        return []

    assert trust_forwarded_for(app, []) is app


def test_an_untrusted_peer_cannot_choose_its_address() -> None:
    environ, body = run(PROXY_NETS, "203.0.113.50", "198.51.100.7")
    assert environ["REMOTE_ADDR"] == "203.0.113.50"
    assert PROXY_ADDR_KEY not in environ
    assert body == [b"ok"]


def test_a_trusted_proxy_names_the_client() -> None:
    environ, _ = run(PROXY_NETS, "10.1.2.3", "198.51.100.7")
    assert environ["REMOTE_ADDR"] == "198.51.100.7"
    assert environ[PROXY_ADDR_KEY] == "10.1.2.3"


def test_what_the_client_wrote_left_of_its_proxy_entry_is_ignored() -> None:
    # The client sent "X-Forwarded-For: 1.1.1.1"; our proxy appended the real peer.
    assert client_of(PROXY_NETS, "10.1.2.3", "1.1.1.1, 198.51.100.7") == "198.51.100.7"


def test_a_chain_of_trusted_proxies_is_walked_from_the_right() -> None:
    header = "1.1.1.1, 198.51.100.7, 192.168.1.1, 10.9.9.9"
    assert client_of(PROXY_NETS, "10.1.2.3", header) == "198.51.100.7"


def test_when_every_hop_is_trusted_the_leftmost_is_the_client() -> None:
    assert client_of(PROXY_NETS, "10.1.2.3", "10.7.7.7, 192.168.1.1") == "10.7.7.7"


def test_several_headers_joined_by_the_server_are_one_list() -> None:
    # Two X-Forwarded-For lines arrive in WSGI as "first, second" (or "first,second").
    assert client_of(PROXY_NETS, "10.1.2.3", "1.1.1.1,198.51.100.7,10.9.9.9") == "198.51.100.7"


@pytest.mark.parametrize(
    ("networks", "peer", "header", "client"),
    [
        (["2001:db8:ffff::/48"], "2001:db8:ffff::1", "2001:db8:1::7", "2001:db8:1::7"),
        (["2001:db8:ffff::/48"], "2001:db8:ffff::1", "[2001:db8:1::7]:4711", "2001:db8:1::7"),
        (["2001:db8:ffff::/48"], "2001:db8:fffe::1", "2001:db8:1::7", "2001:db8:fffe::1"),
        (["10.0.0.0/8"], "::ffff:10.0.0.2", "198.51.100.7", "198.51.100.7"),  # dual stack
        (["10.0.0.0/8"], "10.0.0.2", "::ffff:198.51.100.7", "198.51.100.7"),
        (["10.0.0.0/8", "2001:db8::/32"], "2001:db8::1", "198.51.100.7, 10.0.0.9", "198.51.100.7"),
        (["10.0.0.0/8"], "10.0.0.2", "198.51.100.7:55000", "198.51.100.7"),
    ],
)
def test_ipv6_ports_and_mixed_families(
    networks: list[str], peer: str, header: str, client: str
) -> None:
    assert client_of(networks, peer, header) == client


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ("", "10.1.2.3"),
        ("   ", "10.1.2.3"),
        (",,,", "10.1.2.3"),
        ("unknown", "10.1.2.3"),  # RFC 7239 §6.2
        ("_hidden", "10.1.2.3"),  # RFC 7239 §6.3 obfuscated identifier
        ("198.51.100.7, not-an-ip", "10.1.2.3"),  # the nearest entry is bad: stop there
        ("198.51.100.7, garbage, 10.9.9.9", "10.9.9.9"),  # last good address
        ("198.51.100.7, , 10.9.9.9", "10.9.9.9"),
        ("999.1.1.1", "10.1.2.3"),
        ("[2001:db8::1", "10.1.2.3"),
        ("198.51.100.7\x00", "10.1.2.3"),
        ("1.1.1.1, " * 2000 + "198.51.100.7", "198.51.100.7"),
    ],
)
def test_malformed_entries_stop_the_walk_without_failing(header: str, client: str) -> None:
    environ, body = run(PROXY_NETS, "10.1.2.3", header)
    assert environ["REMOTE_ADDR"] == client
    assert body == [b"ok"]


def test_no_header_or_an_odd_peer_changes_nothing() -> None:
    assert client_of(PROXY_NETS, "10.1.2.3", None) == "10.1.2.3"
    assert client_of(PROXY_NETS, "", "198.51.100.7") == ""  # e.g. a unix socket
    assert client_of(PROXY_NETS, "localhost", "198.51.100.7") == "localhost"


@given(st.text(max_size=300))
def test_any_header_gives_the_peer_or_an_address_from_the_header(header: str) -> None:
    environ, body = run(PROXY_NETS, "10.1.2.3", header)
    assert body == [b"ok"]
    if environ["REMOTE_ADDR"] != "10.1.2.3":
        assert environ[PROXY_ADDR_KEY] == "10.1.2.3"
        ipaddress.ip_address(environ["REMOTE_ADDR"])  # always an address, never header text


# --------------------------------------------------------------------------- through a broker


@pytest.fixture
def broker_behind(tmp_path: Path) -> Iterator[Callable[[list[str]], Broker]]:
    """Brokers with ``server.trusted_proxies`` and an /authorize limit of 2 per IP.

    Served by ``broker.serving.bind``, the waitress settings of ``qq-oidc-broker serve``:
    ``tests.servers.serve`` keeps waitress's default of deleting X-Forwarded-For before
    the app runs, so there the middleware would never see the header.
    """
    started: list[ServedApp] = []

    def factory(trusted_proxies: list[str]) -> Broker:
        base = tmp_path / f"broker-{len(started)}"
        base.mkdir()
        port = free_port()
        config = broker_config(
            base,
            f"http://127.0.0.1:{port}",
            "http://127.0.0.1:9",  # QQ is never contacted
            secrets.token_hex(16),
            server={"host": "127.0.0.1", "port": port, "trusted_proxies": trusted_proxies},
            rate_limits={"enabled": True},
        )
        limits = RateLimits(authorize=Limit(2, LONG), callback=GENEROUS, endpoint=GENEROUS)
        httpd: Any = bind(create_app(config, rate_limits=limits), config.server)
        thread = threading.Thread(target=httpd.run, daemon=True)
        thread.start()
        served = ServedApp(f"http://127.0.0.1:{port}", port, httpd, thread)
        started.append(served)
        clients = {
            c.client_id: {"client_secret": c.client_secret, "redirect_uri": c.redirect_uris[0]}
            for c in config.clients
        }
        return Broker(served, config, clients)

    yield factory
    for served in started:
        served.stop()


def authorize_from(broker: Broker, forwarded_for: str) -> int:
    response = requests.get(
        f"{broker.issuer}/authorize",
        params=valid_params(broker),
        headers={"X-Forwarded-For": forwarded_for},
        allow_redirects=False,
        timeout=5,
    )
    return response.status_code


def test_rate_limits_count_the_client_behind_a_trusted_proxy(
    broker_behind: Callable[[list[str]], Broker],
) -> None:
    broker = broker_behind(["127.0.0.1/32"])  # the test client plays the proxy
    fresh_window(LONG)
    # Four clients behind the proxy: each has its own counter.
    assert [authorize_from(broker, f"198.51.100.{n}") for n in range(4)] == [302] * 4
    # One client: its own limit of 2, whatever it writes left of its proxy's entry.
    same = [authorize_from(broker, f"1.1.1.{n}, 198.51.100.9") for n in range(3)]
    assert same == [302, 302, 429]


def test_rate_limits_count_the_peer_when_it_is_not_a_trusted_proxy(
    broker_behind: Callable[[list[str]], Broker],
) -> None:
    broker = broker_behind(["10.0.0.0/8"])  # the test client (127.0.0.1) is not trusted
    fresh_window(LONG)
    answers = [authorize_from(broker, f"198.51.100.{n}") for n in range(4)]
    assert answers == [302, 302, 429, 429]  # all counted as 127.0.0.1
