"""``claims.picture: proxy``: signed avatar URLs served by the broker (checklist UP-11, UP-12).

Black-box over real sockets: a broker and an emulator on 127.0.0.1 (the emulator serves
avatar images at QQ's paths; ``claims.avatar_hosts`` lets this development broker fetch
from it), plus two raw HTTP servers: a hostile avatar host that is allow-listed the same
way (redirects, huge, slow, wrong types) and a canary that is not, which must never see a
request. Time bounds are asserted as "the bound exists" (a client timeout far above the
broker's limits while the upstream would take minutes), never as speed.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from broker.app import create_app, unenforced_settings
from broker.config import ConfigError, parse_config
from broker.emulator import EmulatorSettings, create_emulator_app
from broker.emulator.avatars import avatar_png
from broker.keys.files import load_or_create_secret
from broker.oidc.avatars import SECRET_NAME, AvatarHosts, AvatarUrls
from broker.web.avatar import (
    AvatarFetcher,
    AvatarUnavailable,
    FetchLimits,
    is_public_address,
    sniffed_type,
)
from tests.conftest import APP_ID, RP, Broker, broker_config, client_definitions
from tests.oidc.test_flow import RelyingParty
from tests.servers import Emulator, ServedApp, free_port, serve

TIMEOUT = 15
#: Far above the broker's total fetch bound (10 s); the slow upstream would take minutes.
SLOW_CLIENT_TIMEOUT = 60
PNG = avatar_png("hostile")


# --------------------------------------------------------------------------- hostile host


@dataclass
class RawServer:
    """A stdlib HTTP server that records every request and misbehaves on demand."""

    server: http.server.ThreadingHTTPServer
    hits: list[str]
    stop_event: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()


Route = Callable[[http.server.BaseHTTPRequestHandler, threading.Event], None]


def _send(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    headers: dict[str, str],
    body: bytes = b"",
) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def _stream(handler: http.server.BaseHTTPRequestHandler, stop: threading.Event) -> None:
    """An image/png body with no Content-Length that goes on for 8 MiB."""
    _send(handler, 200, {"Content-Type": "image/png"}, PNG[:8])
    for _ in range(128):
        if stop.is_set():
            return
        handler.wfile.write(b"\0" * 65536)


def _dribble(handler: http.server.BaseHTTPRequestHandler, stop: threading.Event) -> None:
    """One byte every 0.5 s (under any read timeout) for up to five minutes."""
    _send(handler, 200, {"Content-Type": "image/png"}, PNG[:8])
    for _ in range(600):
        if stop.wait(0.5):
            return
        handler.wfile.write(b"\0")
        handler.wfile.flush()


def _stall(handler: http.server.BaseHTTPRequestHandler, stop: threading.Event) -> None:
    """Accept the request and answer nothing for five minutes."""
    stop.wait(300)


def hostile_routes(emulator_url: str) -> dict[str, Route]:
    redirect_to = f"{emulator_url}/g?b=oidb&k=redirected&s=100"
    return {
        "/ok.png": lambda h, s: _send(h, 200, {"Content-Type": "image/png"}, PNG),
        "/redirect": lambda h, s: _send(h, 302, {"Location": redirect_to}),
        "/declared-huge": lambda h, s: _send(
            h, 200, {"Content-Type": "image/png", "Content-Length": str(5 * 1024 * 1024)}, PNG
        ),
        "/stream-huge": _stream,
        "/dribble": _dribble,
        "/stall": _stall,
        "/html": lambda h, s: _send(h, 200, {"Content-Type": "text/html"}, b"<script>1</script>"),
        "/svg": lambda h, s: _send(
            h, 200, {"Content-Type": "image/svg+xml"}, b"<svg onload='alert(1)'/>"
        ),
        "/fake-png": lambda h, s: _send(h, 200, {"Content-Type": "image/png"}, b"<html>x</html>"),
        "/gzip": lambda h, s: _send(
            h, 200, {"Content-Type": "image/png", "Content-Encoding": "gzip"}, PNG
        ),
        "/missing": lambda h, s: _send(h, 404, {"Content-Type": "text/plain"}, b"no"),
        "/error": lambda h, s: _send(h, 500, {"Content-Type": "text/plain"}, b"oops"),
    }


def start_raw_server(routes: dict[str, Route]) -> RawServer:
    hits: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection does

        def do_GET(self) -> None:
            with lock:
                hits.append(self.path)
            route = routes.get(urlsplit(self.path).path)
            try:
                if route is None:
                    _send(self, 200, {"Content-Type": "application/json"}, b"{}")
                else:
                    route(self, stop)
            except OSError:
                pass  # the broker hung up, as it should on a bad upstream

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="avatar-raw").start()
    return RawServer(server, hits, stop)


# --------------------------------------------------------------------------- the rig


@dataclass
class Rig:
    broker: Broker
    emulator: Emulator
    hostile: RawServer
    canary: RawServer
    served: ServedApp
    urls: AvatarUrls  # the test's own sealer, with the broker's key (a test oracle)

    def avatar_requests(self) -> list[dict[str, object]]:
        return [r for r in self.emulator.requests() if r["endpoint"] == "avatar"]

    def sealed(self, upstream: str, expires_at: int | None = None) -> str:
        """A broker avatar URL for any upstream URL, allowed or not."""
        return self.urls.base + self.urls.seal(upstream, expires_at)


@pytest.fixture(scope="module")
def rig_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    port, key = free_port(), secrets.token_hex(16)
    issuer = f"http://127.0.0.1:{port}"
    settings = EmulatorSettings(
        app_id=APP_ID, app_key=key, callbacks=[f"{issuer}/qq/callback"], unionid_enabled=True
    )
    emulator = Emulator(serve(create_emulator_app(settings)))
    hostile = start_raw_server(hostile_routes(emulator.url))
    canary = start_raw_server({})
    clients = [
        *client_definitions(),
        {
            "client_id": "rp-pairwise",
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": [f"{RP}/pairwise/callback"],
            "subject": "pairwise",
        },
    ]
    claims = {
        "picture": "proxy",
        "avatar_hosts": [f"127.0.0.1:{emulator.served.port}", f"127.0.0.1:{hostile.port}"],
    }
    base = tmp_path_factory.mktemp("avatar")
    config = broker_config(base, issuer, emulator.url, key, clients=clients, claims=claims)
    served = serve(create_app(config), port=port)
    known = {
        c.client_id: {"client_secret": c.client_secret, "redirect_uri": c.redirect_uris[0]}
        for c in config.clients
    }
    secret = load_or_create_secret(Path(config.keys.dir), SECRET_NAME)
    urls = AvatarUrls(issuer, secret, AvatarHosts.with_extra(config.claims.avatar_hosts))
    yield Rig(Broker(served, config, known), emulator, hostile, canary, served, urls)
    served.stop()
    emulator.served.stop()
    hostile.close()
    canary.close()


@pytest.fixture
def rig(rig_server: Rig) -> Rig:
    rig_server.emulator.reset()
    rig_server.hostile.hits.clear()
    rig_server.canary.hits.clear()
    return rig_server


def emulator_avatar(rig: Rig, key: str | None = None) -> str:
    """An avatar URL on the emulator, unique per test so the broker's cache starts cold."""
    return f"{rig.emulator.url}/g?b=oidb&k={key or secrets.token_hex(8)}&s=100&t=1"


def login_with_avatar(rig: Rig, avatar: str, client_id: str = "rp-basic") -> dict[str, object]:
    rig.emulator.control(faults={"get_user_info": f"figureurl:{avatar}"})
    result = RelyingParty(rig.broker, client_id).login(rig.emulator)
    rig.emulator.control(faults={})
    return result


def get(url: str, timeout: float = TIMEOUT) -> requests.Response:
    return requests.get(url, allow_redirects=False, timeout=timeout)


# --------------------------------------------------------------------------- happy path


def test_login_gives_a_picture_under_the_issuer_that_serves_the_emulator_image(
    rig: Rig,
) -> None:
    avatar = emulator_avatar(rig)
    result = login_with_avatar(rig, avatar)
    claims, info = result["claims"], result["userinfo"]
    assert isinstance(claims, dict) and isinstance(info, dict)
    for picture in (claims["picture"], info["picture"]):
        assert picture.startswith(f"{rig.broker.issuer}/avatar/"), picture
        assert rig.emulator.url not in picture and "k=" not in picture
    response = get(claims["picture"])
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    expected = requests.get(avatar, timeout=TIMEOUT)
    assert response.content == expected.content and response.content.startswith(b"\x89PNG")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    cache_control = response.headers["Cache-Control"]
    assert cache_control.startswith("public, max-age=")
    assert 0 < int(cache_control.split("=")[1]) <= 3600
    assert "Set-Cookie" not in response.headers


def test_second_fetch_is_served_from_the_cache(rig: Rig) -> None:
    picture = rig.urls.proxied(emulator_avatar(rig))
    assert picture is not None
    first, second = get(picture), get(picture)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert len(rig.avatar_requests()) == 1
    # Another URL for the same avatar (another login, another client) shares the entry.
    again = rig.urls.proxied(rig.urls.open(picture.rsplit("/", 1)[1])[0])
    assert again is not None and again != picture
    assert get(again).status_code == 200
    assert len(rig.avatar_requests()) == 1


def test_concurrent_requests_for_one_avatar_make_one_fetch(rig: Rig) -> None:
    picture = rig.sealed(emulator_avatar(rig))
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: get(picture).status_code, range(8)))
    assert statuses == [200] * 8
    assert len(rig.avatar_requests()) == 1


def test_a_failed_fetch_is_remembered_for_a_while(rig: Rig) -> None:
    picture = rig.sealed(f"{rig.hostile.url}/error?n={secrets.token_hex(4)}")
    assert [get(picture).status_code for _ in range(3)] == [502, 502, 502]
    assert len(rig.hostile.hits) == 1


def test_head_answers_like_get(rig: Rig) -> None:
    picture = rig.sealed(emulator_avatar(rig))
    response = requests.head(picture, timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"


# --------------------------------------------------------------------------- tokens


def test_tampered_or_foreign_tokens_are_404_without_a_fetch(rig: Rig) -> None:
    picture = rig.sealed(emulator_avatar(rig))
    base, token = picture.rsplit("/", 1)
    middle = len(token) // 2
    flipped = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    other_key = AvatarUrls(rig.broker.issuer, secrets.token_bytes(32), rig.urls.hosts)
    foreign = other_key.seal(emulator_avatar(rig))
    other_issuer = AvatarUrls("http://127.0.0.1:1", load_secret(rig), rig.urls.hosts)
    for bad in (
        flipped,
        token[:-4],
        token + "AAAA",
        "not-a-token",
        "%2e%2e",
        "A" * 3000,
        foreign,
        other_issuer.seal(emulator_avatar(rig)),
    ):
        response = get(f"{base}/{bad}")
        assert response.status_code == 404, (bad[:20], response.status_code)
        assert "image" not in response.headers["Content-Type"]
    assert rig.avatar_requests() == []


def load_secret(rig: Rig) -> bytes:
    return load_or_create_secret(Path(rig.broker.config.keys.dir), SECRET_NAME)


def test_expired_url_is_gone_without_a_fetch(rig: Rig) -> None:
    expired = rig.sealed(emulator_avatar(rig), expires_at=int(time.time()) - 1)
    response = get(expired)
    assert response.status_code == 410
    assert rig.avatar_requests() == []


# --------------------------------------------------------------------------- SSRF


def test_sealed_urls_outside_the_allow_list_are_refused_without_any_connection(
    rig: Rig,
) -> None:
    canary = rig.canary
    emu_port = rig.emulator.served.port
    for upstream in (
        f"{canary.url}/avatar.png",  # loopback, but not an avatar host
        f"http://localhost:{canary.port}/avatar.png",
        f"http://[::ffff:127.0.0.1]:{canary.port}/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://thirdqq.qlogo.cn.evil.test/g",
        "http://evilqlogo.cn/g",
        f"http://thirdqq.qlogo.cn:{canary.port}/g",  # a QQ host, but not its port
        f"http://user:pw@127.0.0.1:{emu_port}/g?k=x",  # credentials
        f"ftp://127.0.0.1:{emu_port}/g",
        "javascript:alert(1)",
    ):
        response = get(rig.sealed(upstream))
        assert response.status_code == 404, (upstream, response.status_code)
    assert canary.hits == []
    assert rig.avatar_requests() == []


def test_redirects_are_not_followed(rig: Rig) -> None:
    response = get(rig.sealed(f"{rig.hostile.url}/redirect"))
    assert response.status_code == 502
    assert rig.hostile.hits == ["/redirect"]
    assert rig.avatar_requests() == []  # the redirect target (an allowed host) never asked


@pytest.mark.parametrize("path", ["/declared-huge", "/stream-huge"])
def test_oversized_images_are_cut_with_502(rig: Rig, path: str) -> None:
    response = get(rig.sealed(f"{rig.hostile.url}{path}"), timeout=SLOW_CLIENT_TIMEOUT)
    assert response.status_code == 502
    assert len(response.content) < 1024


@pytest.mark.parametrize("path", ["/dribble", "/stall"])
def test_a_slow_upstream_is_bounded(rig: Rig, path: str) -> None:
    # The upstream would take five minutes; the broker answers within its own bound
    # (10 s total), well inside this client's timeout.
    response = get(rig.sealed(f"{rig.hostile.url}{path}"), timeout=SLOW_CLIENT_TIMEOUT)
    assert response.status_code == 502
    assert rig.hostile.hits == [path]


@pytest.mark.parametrize("path", ["/html", "/svg", "/fake-png", "/gzip"])
def test_anything_but_a_plain_image_is_refused(rig: Rig, path: str) -> None:
    response = get(rig.sealed(f"{rig.hostile.url}{path}"))
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/plain")
    assert b"<s" not in response.content


@pytest.mark.parametrize(("path", "status"), [("/missing", 404), ("/error", 502)])
def test_upstream_errors_are_clean(rig: Rig, path: str, status: int) -> None:
    response = get(rig.sealed(f"{rig.hostile.url}{path}"))
    assert response.status_code == status
    assert "Traceback" not in response.text


def test_an_allowed_host_with_a_good_image_is_served(rig: Rig) -> None:
    response = get(rig.sealed(f"{rig.hostile.url}/ok.png"))
    assert response.status_code == 200 and response.content == PNG


def test_an_avatar_host_that_resolves_to_loopback_is_refused() -> None:
    # DNS rebinding: the name is on the allow-list (here "localhost", by real resolution
    # through the system resolver), its address is not public, so no connection is made.
    fetcher = AvatarFetcher(AvatarHosts(domains=("localhost",)), FetchLimits(total_timeout=5))
    with pytest.raises(AvatarUnavailable) as refused:
        fetcher.fetch("http://localhost/avatar.png")
    assert refused.value.status == 502 and "non-public" in refused.value.reason


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),  # noqa: S104 -- an address to judge, not to bind
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("ff02::1", False),
        ("183.3.226.35", True),
        ("2408:8756:c52:1a18::2", True),
        ("not-an-address", False),
    ],
)
def test_public_address_check(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_allow_list_is_qq_avatar_hosts_on_default_ports() -> None:
    hosts = AvatarHosts()
    for url in (
        "http://thirdqq.qlogo.cn/g?b=oidb&k=x&s=100",
        "https://q.qlogo.cn/qqapp/1/X/40",
        "http://qzapp.qlogo.cn/qzapp/1/X/100",
        "http://qlogo.cn/x",
    ):
        assert hosts.allows(url), url
    for url in (
        "http://thirdqq.qlogo.cn:8080/g",
        "https://thirdqq.qlogo.cn:80/g",
        "http://xqlogo.cn/g",
        "http://qlogo.cn.evil.test/g",
        "http://a@thirdqq.qlogo.cn/g",
        "http://127.0.0.1/g",
        "file:///etc/passwd",
        "http://[::1/",
    ):
        assert not hosts.allows(url), url


def test_sniffed_type_trusts_bytes_not_headers() -> None:
    assert sniffed_type(PNG) == "image/png"
    assert sniffed_type(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert sniffed_type(b"GIF89a...") == "image/gif"
    assert sniffed_type(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniffed_type(b"<svg/>") is None


# --------------------------------------------------------------------------- privacy


def test_pairwise_client_gets_a_working_picture_without_the_openid(rig: Rig) -> None:
    openid = rig.emulator.user("zhangsan")["openid"]
    avatar = f"{rig.emulator.url}/qzapp/{APP_ID}/{openid}/100"
    result = login_with_avatar(rig, avatar, client_id="rp-pairwise")
    claims, info = result["claims"], result["userinfo"]
    assert isinstance(claims, dict) and isinstance(info, dict)
    assert claims["sub"] != openid
    assert openid.lower() not in json.dumps([claims, info]).lower()
    picture = claims["picture"]
    assert picture.startswith(f"{rig.broker.issuer}/avatar/")
    response = get(picture)
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    logged = rig.avatar_requests()
    assert [entry["path"] for entry in logged] == [f"/qzapp/{APP_ID}/{openid}/100"]


def test_pictures_are_unlinkable_across_clients(rig: Rig) -> None:
    avatar = emulator_avatar(rig)
    a = login_with_avatar(rig, avatar, client_id="rp-basic")["claims"]
    b = login_with_avatar(rig, avatar, client_id="rp-pairwise")["claims"]
    assert isinstance(a, dict) and isinstance(b, dict)
    assert a["picture"] != b["picture"]


# --------------------------------------------------------------------------- config


def test_other_policies_serve_no_avatar_route(broker: Broker) -> None:
    # The session broker runs the default (https): nothing to proxy, nothing to fetch.
    assert broker.config.claims.picture == "https"
    assert get(f"{broker.issuer}/avatar/AAAA").status_code == 404


def test_proxy_is_no_longer_reported_as_unenforced(rig: Rig) -> None:
    assert not any("picture" in note for note in unenforced_settings(rig.broker.config))


def test_avatar_hosts_are_development_only() -> None:
    data = {
        "issuer": "https://id.example.com",
        "secret_key": secrets.token_urlsafe(32),
        "upstream": {"qq": {"app_id": APP_ID, "app_key": secrets.token_hex(16)}},
        "claims": {"picture": "proxy", "avatar_hosts": ["127.0.0.1:8001"]},
    }
    with pytest.raises(ConfigError, match=r"claims\.avatar_hosts.*development only"):
        parse_config(data, source="<test>")
    for bad in ("127.0.0.1", "127.0.0.1:x", "h:1/path", "u@h:1"):
        dev = {**data, "issuer": "http://127.0.0.1:8000", "claims": {"avatar_hosts": [bad]}}
        with pytest.raises(ConfigError, match="is not host:port"):
            parse_config(dev, source="<test>")
