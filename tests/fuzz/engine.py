"""A seeded, bounded HTTP fuzzer for the broker: the engine behind ``tests/fuzz/test_http.py``
and ``bench/fuzz.py``.

Requests go out over raw sockets: ``requests`` and ``http.client`` refuse or repair exactly
the broken targets, encodings and headers worth sending. Each request is generated from
``random.Random(f"{seed}:{index}")`` (plus the run's genuine tokens and the clock), so a
failure is replayed by its seed and index (``python bench/fuzz.py --seed S --index I``)
whatever the thread interleaving was.

Every answer is checked for: a status below 500, no traceback, and no secret or private
config value (QQ app key, client secrets, secret key, storage URL, key directory, PEM
markers) in the status line, headers or body. Memory is sampled while the run goes on;
the broker runs in this process (waitress threads), so this process's RSS is the broker's.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import http.client
import itertools
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import requests

# --------------------------------------------------------------------------- what to check

#: Text no answer may contain, whatever was asked.
MARKERS = ("Traceback", 'File "', "-----BEGIN")
#: waitress's default ``max_request_header_size``: beyond it the server may drop the
#: connection before (or instead of) answering, which is a refusal, not a crash.
WAITRESS_MAX_HEADER = 262_144
REQUEST_TIMEOUT = 15.0
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
#: Upper bound for a generated query string or body ("up to a few hundred KB").
MAX_PART_BYTES = 450_000

#: 5xx answers that are known product bugs, each pinned by a strict-xfail test: tag ->
#: (paths, explanation). A request carrying the tag and sent to one of the paths is counted
#: as "known", not as a failure. Empty now: the 500s found so far are fixed, and pinned by
#: regression tests in test_http.py/test_parsers.py. Their vectors keep their tags
#: ("jose-crit-not-list", "claims-deep-json"), so the bench's tag counts show they still run.
KNOWN_ISSUES: Mapping[str, tuple[tuple[str, ...], str]] = {}


class BrokerLike(Protocol):
    """What the fuzz needs of ``tests.conftest.Broker``."""

    config: Any
    clients: dict[str, dict[str, Any]]

    @property
    def issuer(self) -> str: ...

    def metadata(self) -> dict[str, Any]: ...


class EmulatorLike(Protocol):
    """What the fuzz needs of ``tests.conftest.Emulator``."""

    @property
    def url(self) -> str: ...

    def control(self, **settings: Any) -> None: ...

    def reset(self) -> None: ...


def forbidden_values(config: Any) -> dict[str, str]:
    """Config values that must never appear in an answer, by a name safe to print."""
    values = {
        "upstream.qq.app_key": config.upstream.qq.app_key,
        "secret_key": config.secret_key,
        "pairwise_salt": config.pairwise_salt,
        "storage.url": config.storage.url,
        "keys.dir": str(config.keys.dir),
    }
    if not config.secret_key:  # generated beside the keys; Flask signs with its hex form
        from broker.keys import load_or_create_secret

        values["secret_key"] = load_or_create_secret(config.keys.dir, "secret_key").hex()
    for client in config.clients:
        values[f"client_secret of {client.client_id}"] = client.client_secret
    return {name: value for name, value in values.items() if value}


# --------------------------------------------------------------------------- material


@dataclass
class Material:
    """Genuine values from real logins, so that mutations get past the first checks."""

    issuer: str
    host: str
    port: int
    prefix: str
    clients: dict[str, tuple[str | None, str]]
    forbidden: dict[str, str]
    post_logout_uri: str = "http://127.0.0.1:9/refresh/logged-out"
    id_token: str = ""
    access_token: str = ""
    refresh_token: str = ""
    code: str = ""
    kid: str = ""
    public_pem: bytes = b""
    public_der: bytes = b""
    public_jwk: str = ""
    cookies: dict[str, str] = field(default_factory=dict)
    #: Unconsumed QQ callbacks: (target, cookie header) of logins stopped before /qq/callback.
    callbacks: list[tuple[str, str]] = field(default_factory=list)
    emulator_url: str = ""


def gather(broker: BrokerLike, emulator: EmulatorLike | None) -> Material:
    """Log in once (tokens, cookies, an unredeemed code, pending callbacks), if an emulator
    is given; otherwise only the public material (client ids, keys)."""
    parts = urlsplit(broker.issuer)
    material = Material(
        issuer=broker.issuer,
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 80,
        prefix=parts.path.rstrip("/"),
        clients={
            cid: (info.get("client_secret"), info["redirect_uri"])
            for cid, info in broker.clients.items()
        },
        forbidden=forbidden_values(broker.config),
    )
    _public_keys(broker, material)
    if emulator is not None:
        material.emulator_url = emulator.url
        _login(broker, emulator, material)
    return material


def _public_keys(broker: BrokerLike, material: Material) -> None:
    import jwt  # PyJWT: an independent reading of our JWKS

    jwks = requests.get(broker.metadata()["jwks_uri"], timeout=10).json()
    rsa = next(k for k in jwks["keys"] if k["kty"] == "RSA")
    from cryptography.hazmat.primitives import serialization

    key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(rsa))
    material.kid = rsa["kid"]
    material.public_jwk = json.dumps(rsa)
    material.public_pem = key.public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    material.public_der = key.public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _login(broker: Any, emulator: Any, material: Material) -> None:
    from tests.flows import query_of
    from tests.oidc.test_flow import RelyingParty

    rp = RelyingParty(broker, "rp-refresh", scope="openid profile offline_access")
    browser = requests.Session()
    result = rp.login(emulator, browser=browser)
    material.id_token = result["token"]["id_token"]
    material.access_token = result["token"]["access_token"]
    material.refresh_token = result["token"].get("refresh_token", "")
    material.cookies = browser.cookies.get_dict()
    # An unredeemed code: single sign-on in the same browser, no QQ round trip.
    url, _ = rp.authorization_url()
    again = browser.get(url, allow_redirects=False, timeout=10)
    material.code = query_of(again.headers.get("Location", "")).get("code", "")
    # Logins stopped just before the broker's callback (each state is single use).
    for _ in range(4):
        fresh = requests.Session()
        url, _ = rp.authorization_url()
        start = fresh.get(url, allow_redirects=False, timeout=10)
        at_qq = fresh.get(start.headers["Location"], allow_redirects=False, timeout=10)
        callback = urlsplit(at_qq.headers["Location"])
        cookie = "; ".join(f"{k}={v}" for k, v in fresh.cookies.get_dict().items())
        material.callbacks.append((f"{callback.path}?{callback.query}", cookie))


# --------------------------------------------------------------------------- requests


@dataclass
class FuzzRequest:
    index: int
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    chunked: bool = False
    version: bytes = b"HTTP/1.1"
    tags: frozenset[str] = frozenset()

    @property
    def path(self) -> str:
        return re.split(rb"[?#]", self.target, maxsplit=1)[0].decode("latin-1")

    def head(self) -> bytes:
        lines = [self.method.encode("latin-1") + b" " + self.target + b" " + self.version]
        lines += [name + b": " + value for name, value in self.headers]
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked")
        elif self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: " + str(len(self.body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def wire(self) -> bytes:
        if not self.chunked:
            return self.head() + self.body
        chunks = [self.head()]
        for start in range(0, len(self.body), 4096):
            piece = self.body[start : start + 4096]
            chunks += [f"{len(piece):x}\r\n".encode(), piece, b"\r\n"]
        return b"".join([*chunks, b"0\r\n\r\n"])

    def describe(self, limit: int = 300) -> str:
        """An ASCII summary for failure reports (long parts cut)."""

        def cut(data: bytes) -> str:
            text = data[:limit].decode("latin-1").encode("ascii", "backslashreplace").decode()
            return text + (f"...(+{len(data) - limit} bytes)" if len(data) > limit else "")

        headers = ", ".join(f"{n.decode('latin-1')}: {cut(v)}" for n, v in self.headers)
        body = f" body={cut(self.body)}" if self.body else ""
        tags = f" tags={sorted(self.tags)}" if self.tags else ""
        chunked = " (chunked)" if self.chunked else ""
        return f"{self.method} {cut(self.target)} [{headers}]{body}{chunked}{tags}"


@dataclass
class Outcome:
    request: FuzzRequest
    status: int | None
    raw: bytes
    elapsed: float
    error: str = ""
    location: str = ""
    set_cookies: list[str] = field(default_factory=list)


def send(material: Material, request: FuzzRequest, timeout: float = REQUEST_TIMEOUT) -> Outcome:
    """One request on a fresh connection; the whole answer (status line, headers, body)."""
    started = time.monotonic()
    sock = socket.create_connection((material.host, material.port), timeout=timeout)
    try:
        send_error = ""
        try:
            sock.sendall(request.wire())
        except OSError as exc:  # the server may answer (431/413) and close mid-upload
            send_error = f"send: {type(exc).__name__}"
        response = http.client.HTTPResponse(sock, method=request.method)
        try:
            response.begin()
            body = response.read(MAX_RESPONSE_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            error = f"{send_error} receive: {type(exc).__name__}".strip()
            return Outcome(request, None, b"", time.monotonic() - started, error)
        head = f"HTTP {response.status} {response.reason}\r\n{response.headers}".encode(
            "latin-1", "replace"
        )
        return Outcome(
            request,
            response.status,
            head + b"\r\n" + body,
            time.monotonic() - started,
            location=response.headers.get("Location", ""),
            set_cookies=response.headers.get_all("Set-Cookie") or [],
        )
    finally:
        sock.close()


def problems(outcome: Outcome, forbidden: Mapping[str, str]) -> list[str]:
    """What is wrong with an answer: empty when it is acceptable."""
    request = outcome.request
    if outcome.status is None:
        if len(request.head()) > WAITRESS_MAX_HEADER:
            return []  # refused before reading: waitress may drop an oversized head
        return [f"no answer ({outcome.error})"]
    found = []
    if outcome.status >= 500:
        found.append(f"HTTP {outcome.status}")
    for marker in MARKERS:
        if marker.encode() in outcome.raw:
            found.append(f"answer contains {marker!r}")
    for name, value in forbidden.items():
        if value.encode("utf-8", "replace") in outcome.raw:
            found.append(f"answer contains the {name}")
    return found


def known_issue(outcome: Outcome) -> str | None:
    """The KNOWN_ISSUES tag explaining a 5xx answer, if any."""
    if outcome.status is None or outcome.status < 500:
        return None
    for tag in outcome.request.tags:
        paths, _ = KNOWN_ISSUES.get(tag, ((), ""))
        if any(outcome.request.path.endswith(path) for path in paths):
            return tag
    return None


# --------------------------------------------------------------------------- generation

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
ODD_METHODS = ("TRACE", "PROPFIND", "get", "FOO", "CONNECT")
AUTHORIZE_PARAMS = (
    "client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "code_challenge",
    "code_challenge_method", "prompt", "max_age", "id_token_hint", "request", "request_uri",
    "response_mode", "login_hint", "ui_locales", "claims_locales", "display", "claims",
    "acr_values",
)  # fmt: skip
TOKEN_PARAMS = (
    "grant_type", "code", "redirect_uri", "code_verifier", "refresh_token", "scope", "client_id",
    "client_secret", "client_assertion", "client_assertion_type",
)  # fmt: skip
TOKEN_MGMT_PARAMS = (
    "token", "token_type_hint", "client_id", "client_secret", "client_assertion",
    "client_assertion_type",
)  # fmt: skip
LOGOUT_PARAMS = ("id_token_hint", "post_logout_redirect_uri", "state", "client_id", "ui_locales",
                 "logout_hint", "confirm")  # fmt: skip
#: Path -> (methods it serves, parameter names it reads).
ENDPOINTS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "/.well-known/openid-configuration": (("GET",), ()),
    "/jwks.json": (("GET",), ()),
    "/authorize": (("GET", "POST"), AUTHORIZE_PARAMS),
    "/qq/callback": (("GET",), ("code", "state", "usercancel", "msg", "error")),
    "/token": (("POST",), TOKEN_PARAMS),
    "/userinfo": (("GET", "POST"), ("access_token", "claims", "schema")),
    "/revoke": (("POST",), TOKEN_MGMT_PARAMS),
    "/introspect": (("POST",), TOKEN_MGMT_PARAMS),
    "/logout": (
        ("GET", "POST"),
        LOGOUT_PARAMS,
    ),
    "/healthz": (("GET",), ()),
    "/readyz": (("GET",), ()),
    "/static/broker.css": (("GET",), ()),
}
UNKNOWN_PATHS = (
    "/", "/nope", "/authorize/", "/AUTHORIZE", "//authorize", "/authorize%2F", "/token;x=1",
    "/userinfo%20", "/static/", "/static/form_post.js", "/static/nope.css",
    "/static/../config.yaml", "/static/..%2f..%2fconfig.yaml",
    "/static/%2e%2e/%2e%2e/keys/rs256.pem", "/static/..%5c..%5cconfig.yaml", "/.well-known/",
    "/.well-known/oauth-authorization-server", "/.well-known/openid-configuration/", "/jwks.json/",
    "/console", "/_emulator/control", "/demo", "/%ZZ", "/%C3%28", "/%00", "/%FF",
    "/qq/callback/..", "/qq/./callback", "/*",
)  # fmt: skip

WEIRD_TEXT = (
    "", " ", "+", "%", "\x00", "\r\n", "\t", "\x1b[31m", "\x7f", "\u202e", "\u200b", "\ufeff",
    "中文登录", "😀", "\uff03", "\uff0f", "ﬁ", "²", "١٢٣", "İ", "ß", "\u0301", "\u2028",
    '"><svg onload=alert(1)>', "<script>alert(1)</script>", "javascript:alert(1)", "' OR '1'='1",
    "../../etc/passwd", "..\\..\\windows", "${jndi:ldap://127.0.0.1:9/x}", "{{7*7}}", "%s%s%n",
    "\\", '"', "'", "&", "=", "#", "?", ";", ",", "None", "null", "undefined", "NaN", "[]", "{}",
    "https://evil.test/", "//evil.test", "/\\evil.test", "https:evil.test", "http://[", "0", "-1",
    "1e309", "Infinity", "99999999999999999999999", "0x10", "1.5", " 1",
)  # fmt: skip
BROKEN_ESCAPES = (
    b"%ZZ", b"%", b"%C3%28", b"%FF", b"%E2%82", b"%00", b"%u0041", b"%%", b"%ED%A0%80", b"%C0%AF",
    b"%F4%90%80%80", b"%0d%0a",
)  # fmt: skip
RAW_BYTES = (b"\xff\xfe", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80", b"\xf5")
USERS = ("zhangsan", "lisi", "wangxiaohong", "xiaoming", "zhaoliu", "noname")
#: Upstream faults for login flows (checklist UP-06). The ``openid:``-style value faults are
#: for emulators that know them; a refused control update falls back to no fault.
EMULATOR_FAULTS: tuple[dict[str, str], ...] = (
    {}, {}, {}, {"token": "http_500"}, {"token": "html"}, {"token": "jsonp_error"},
    {"token": "empty"}, {"token": "garbage"}, {"token": "oversized"}, {"token": "omit_openid"},
    {"token": "trailing_whitespace"}, {"token": "expires_in_int"}, {"token": "ignore_fmt"},
    {"token": "error:100020"}, {"token": "error:100009"}, {"token": "error:abc"},
    {"me": "jsonp_error"}, {"me": "garbage"}, {"me": "other_client_id"}, {"me": "ignore_fmt"},
    {"me": "error:100048"}, {"token": "omit_openid", "me": "html"}, {"get_user_info": "http_500"},
    {"get_user_info": "garbage"}, {"get_user_info": "error:-1"}, {"get_user_info": "oversized"},
    {"get_user_info": "jsonp_error"}, {"token": "openid:None"}, {"token": "openid:"},
    {"me": "openid:null"}, {"token": "omit_openid", "me": "openid:../x"}, {"me": "unionid:None"},
    {"get_user_info": "nickname:" + "<b>x</b>\u202e\x00" * 500},
    {"get_user_info": "figureurl:javascript:alert(1)"}, {"get_user_info": "figureurl:http://["},
)  # fmt: skip


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def compact_jws(header: Any, payload: Any, signature: bytes = b"") -> str:
    """A JWS compact serialization of arbitrary JSON values (not necessarily objects)."""
    return f"{b64(json.dumps(header))}.{b64(json.dumps(payload))}.{b64(signature)}"


def hs256_with(key: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An HS256 token keyed with ``key`` (the algorithm-confusion attack: our public key)."""
    signing_input = f"{b64(json.dumps(header))}.{b64(json.dumps(payload))}"
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


class Generator:
    """Random requests for one index. ``tags`` collects what KNOWN_ISSUES may match."""

    def __init__(self, material: Material, seed: int, index: int) -> None:
        self.m = material
        self.index = index
        self.rng = random.Random(f"{seed}:{index}")
        self.tags: set[str] = set()

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    # -- values

    def text(self, low: int = 0, high: int = 40) -> str:
        pool = self.rng.choice(
            (
                "abcdefghijklmnopqrstuvwxyz0123456789",
                "".join(chr(c) for c in range(0x20, 0x7F)),
                "".join(chr(c) for c in range(0x00, 0x20)) + "\u202e\u200b\ufeff\u2028",
                "中文登录用户ÀÉÎõü😀𝔘ﬁ²١",
            )
        )
        return "".join(self.rng.choice(pool) for _ in range(self.rng.randint(low, high)))

    def long(self) -> str:
        sizes = (513, 2049, 4097, 10_000, 70_000) if self.chance(0.85) else (140_000, 300_000)
        size = self.rng.choice(sizes)
        unit = self.rng.choice(("A", "%", "中", "a.", "[", "&x=1", "\u202e"))
        return (unit * (size // len(unit) + 1))[:size]

    def deep_json(self, name: str) -> str:
        depth = self.rng.choice((10, 100, 500, 1000, 1500, 4000))
        if name == "claims" and depth >= 500:
            self.tags.add("claims-deep-json")
        opener = self.rng.choice(("[", '{"userinfo":', '{"id_token":{"a":'))
        closer = {"[": "]", '{"userinfo":': "}", '{"id_token":{"a":': "}}"}[opener]
        return opener * depth + "null" + closer * depth * self.rng.choice((0, 1))

    def generic(self, name: str = "") -> str | bytes:
        pick = self.rng.random()
        if pick < 0.25:
            return self.rng.choice(WEIRD_TEXT)
        if pick < 0.50:
            return self.text()
        if pick < 0.58:
            return self.long()
        if pick < 0.63:
            return self.deep_json(name)
        if pick < 0.75:
            return self.jose()
        if pick < 0.82:
            return self.rng.choice(RAW_BYTES) + self.text(0, 5).encode()
        if pick < 0.90:
            genuine = (self.m.id_token, self.m.access_token, self.m.refresh_token, self.m.code)
            return self.rng.choice(genuine) + self.rng.choice(("", "x", " ", "\x00"))
        return b64(self.rng.randbytes(self.rng.randint(1, 64)))

    def specific(self, name: str) -> str | bytes:
        """Plausible values, so a request gets past the first checks."""
        m, rng = self.m, self.rng
        client_id = rng.choice([*m.clients, "nope", "RP-BASIC", "rp-basic ", ""])
        if name == "client_id":
            return client_id
        if name in ("redirect_uri", "post_logout_redirect_uri"):
            base = rng.choice(
                [uri for _, uri in m.clients.values()] + [m.post_logout_uri, "https://evil.test/cb"]
            )
            return base + rng.choice(("", "", "/", "?x=1", "#f", "%2F..", "/..;/x", "\r\n", " "))
        choices: dict[str, tuple[str, ...]] = {
            "response_type": ("code", "code", "token", "id_token", "code id_token", "code code",
                              "", "CODE", "none"),
            "scope": ("openid", "openid profile", "openid offline_access", "profile",
                      "openid email", "openid " * 3000, "openid\x00", "openid profile profile"),
            "prompt": ("none", "login", "consent", "none login", "select_account", "bogus", ""),
            "max_age": ("0", "1", "10000", "-1", "abc", "²", "١", "1" * 600, "1.5", " 1", ""),
            "code_challenge_method": ("S256", "S256", "plain", "s256", "", "S512"),
            "code_challenge": ("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "short",
                               "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c!", "A" * 200),
            "response_mode": ("query", "form_post", "fragment", "form_post.jwt", "", "query.jwt"),
            "display": ("page", "popup", "touch", "wap", "mobile", "x"),
            "ui_locales": ("en", "zh-CN", "en zh", "xx-YY", "zh" * 300, "*"),
            "claims_locales": ("en", "zh-CN", "x"),
            "grant_type": ("authorization_code", "authorization_code", "refresh_token",
                           "refresh_token", "password", "client_credentials",
                           "urn:ietf:params:oauth:grant-type:jwt-bearer",
                           "urn:ietf:params:oauth:grant-type:device_code", "", "implicit"),
            "client_assertion_type": ("urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                      "x"),
            "token_type_hint": ("access_token", "refresh_token", "id_token", "x", ""),
            "usercancel": ("1", "0", "", "yes", "-1"),
            "claims": ('{"userinfo":{"nickname":null}}',
                       '{"id_token":{"auth_time":{"essential":true}}}', '{"userinfo":"x"}',
                       '{"x":{}}', "[]", "{", '{"userinfo":{"sub":{"value":1}}}'),
        }  # fmt: skip
        if name in choices:
            return rng.choice(choices[name])
        if name == "client_secret":
            secret = m.clients.get(client_id, (None, ""))[0] or ""
            return rng.choice((secret, secret + "x", "", "\xff"))
        if name == "code":
            return rng.choice((m.code, m.code + "x", "A" * 129, "", "中文", self.text(1, 40)))
        if name in ("refresh_token", "token", "access_token"):
            return rng.choice(
                (m.refresh_token, m.access_token, m.id_token, m.code, self.text(1, 60), "")
            )
        if name in ("id_token_hint", "client_assertion", "request", "logout_hint"):
            return self.jose()
        if name == "code_verifier":
            return rng.choice(("a" * 43, "a" * 129, "short", "~" * 50, self.text(43, 60)))
        if name in ("state", "nonce", "login_hint", "acr_values", "confirm", "msg", "error"):
            return self.text(0, 80)
        if name == "request_uri":
            return rng.choice(("http://127.0.0.1:9/r", "http://169.254.169.254/latest/", "urn:x"))
        return self.generic(name)

    def value(self, name: str) -> str | bytes:
        return self.specific(name) if self.chance(0.55) else self.generic(name)

    # -- JOSE

    def jose(self) -> str:
        m, rng = self.m, self.rng
        now = int(time.time())
        client = rng.choice(sorted(m.clients))  # client assertions name their client twice
        payload: dict[str, Any] = {
            "iss": rng.choice((m.issuer, m.issuer + "/", "https://broker.evil", client)),
            "sub": rng.choice(("x", "someone-else", "", "None", client)),
            "aud": rng.choice(
                ("rp-refresh", ["rp-refresh", "rp-basic"], 5, {}, m.issuer + "/token", m.issuer)
            ),
            "jti": rng.choice(("j-" + self.text(1, 8), 1, "")),
            "exp": rng.choice((now + 600, now - 600, "soon", None, 1e300, -1)),
            "iat": rng.choice((now, "x", [])),
            "sid": rng.choice(("x", 1, None, [])),
        }
        if not rng.getrandbits(2):
            payload = {k: v for k, v in payload.items() if rng.getrandbits(1)}
        pick = rng.random()
        if pick < 0.15 and m.id_token:
            head, body, sig = [*m.id_token.split("."), "", ""][:3]
            variant = rng.randrange(6)
            if variant == 0:
                return m.id_token
            if variant == 1:
                return f"{head}.{b64(json.dumps(payload))}.{sig}"
            if variant == 2:
                return f"{b64(json.dumps({'alg': 'none'}))}.{body}."
            if variant == 3:
                return f"{head}.{body}."
            if variant == 4:
                return m.id_token[: rng.randrange(len(m.id_token))]
            return f"{head}.{body}.{sig[:-2]}{rng.choice('AB')}{sig[-1:]}"
        if pick < 0.25:
            alg = {"alg": "HS256", "kid": m.kid}
            key = rng.choice((m.public_pem, m.public_der, m.public_jwk.encode()))
            return hs256_with(key, alg, payload)
        if pick < 0.60:
            return compact_jws(self.jose_header(), payload, rng.randbytes(rng.choice((0, 64, 256))))
        if pick < 0.72:
            return ".".join(
                self.text(0, 30) if rng.getrandbits(1) else b64(rng.randbytes(rng.randint(0, 80)))
                for _ in range(rng.randint(1, 6))
            )
        if pick < 0.80:
            return "." * rng.choice((1, 2, 3, 4, 100, 10_000))
        if pick < 0.88:
            header = b64(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM", "zip": "DEF"}))
            return ".".join([header, *(b64(rng.randbytes(32)) for _ in range(4))])
        size = rng.choice((600, 5000, 100_000, 300_000))
        segment = rng.randrange(3)
        parts = [b64(json.dumps({"alg": "RS256", "kid": m.kid})), b64(json.dumps(payload)), ""]
        parts[segment] = "A" * size
        return ".".join(parts)

    def jose_header(self) -> Any:
        rng = self.rng
        if not rng.randrange(12):
            return rng.choice(([1], "x", None, 5, [], "[" * 300))
        odd: tuple[Any, ...] = (1, None, [], {}, True, "", "x" * 600)
        fields: dict[str, tuple[Any, ...]] = {
            "alg": ("RS256", "ES256", "EdDSA", "none", "None", "HS256", "RSA-OAEP", "dir", *odd),
            "kid": (self.m.kid, "unknown", "../../keys/rs256", "<script>", *odd),
            "typ": ("JWT", "at+jwt", "JOSE", *odd),
            "cty": ("JWT", *odd),
            "jku": ("http://127.0.0.1:9/jwks", *odd),
            "x5u": ("http://127.0.0.1:9/x5u", *odd),
            "jwk": ({"kty": "RSA", "n": "AQAB", "e": "AQAB"}, {"kty": "oct", "k": "AA"}, *odd),
            "x5c": (["MIIB"], *odd),
            "x5t": ("abc", *odd),
            "b64": (False, True, *odd),
            "zip": ("DEF", *odd),
            "enc": ("A128GCM", *odd),
            "crit": (["exp"], ["b64"], ["alg"], [], *odd, [1], ["x", 2]),
        }
        header = {"alg": "RS256"} if rng.getrandbits(1) else {}
        for name in rng.sample(sorted(fields), rng.randint(1, 6)):
            sane = [v for v in fields[name] if v not in odd]
            header[name] = rng.choice(sane if sane and rng.getrandbits(1) else fields[name])
        crit: Any = header.get("crit", [])
        if not (isinstance(crit, list) and all(isinstance(c, str) for c in crit)):
            self.tags.add("jose-crit-not-list")
        return header

    # -- encodings

    def escape(self, value: str | bytes) -> bytes:
        raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        pick = self.rng.random()
        if pick < 0.78:
            encoded = quote(raw, safe="").encode()
        elif pick < 0.86:
            encoded = quote_plus(raw, safe="").encode()
        elif pick < 0.92:
            # Latin-1 bytes, percent-encoded: valid escapes, invalid UTF-8.
            text = raw.decode("utf-8", "replace")
            encoded = quote(text.encode("latin-1", "replace"), safe="").encode()
        else:
            encoded = quote(raw, safe="").encode()
            cut = self.rng.randint(0, len(encoded))
            encoded = encoded[:cut] + self.rng.choice(BROKEN_ESCAPES) + encoded[cut:]
        return encoded

    def pairs_bytes(self, pairs: list[tuple[str, str | bytes]]) -> bytes:
        items = []
        for name, value in pairs:
            if self.chance(0.02):
                items.append(self.escape(name))  # a name without '='
            else:
                items.append(self.escape(name) + b"=" + self.escape(value))
        separator = b"&" if self.chance(0.93) else self.rng.choice((b";", b"&&", b"&amp;"))
        return separator.join(items)

    # -- parameters

    def base_pairs(self, path: str) -> list[tuple[str, str | bytes]]:
        """A valid request for the endpoint, to be mutated afterwards."""
        m = self.m
        client_id = self.rng.choice(sorted(m.clients))
        redirect_uri = m.clients[client_id][1]
        if path == "/authorize":
            return [
                ("response_type", "code"),
                ("client_id", client_id),
                ("redirect_uri", redirect_uri),
                ("scope", "openid profile"),
                ("state", "s-" + self.text(0, 8)),
                ("nonce", "n"),
                ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
                ("code_challenge_method", "S256"),
            ]
        if path == "/token":
            if self.chance(0.5):
                return [("grant_type", "refresh_token"), ("refresh_token", m.refresh_token)]
            return [
                ("grant_type", "authorization_code"),
                ("code", m.code),
                ("redirect_uri", m.clients["rp-refresh"][1]),
                ("code_verifier", "a" * 43),
            ]
        if path == "/logout":
            return [
                ("id_token_hint", m.id_token),
                ("post_logout_redirect_uri", m.post_logout_uri),
                ("state", "bye"),
                ("client_id", "rp-refresh"),
            ]
        if path in ("/revoke", "/introspect"):
            return [("token", self.rng.choice((m.access_token, m.refresh_token)))]
        if path == "/userinfo":
            return [("access_token", m.access_token)]
        return []

    def pairs(self, path: str, names: tuple[str, ...]) -> list[tuple[str, str | bytes]]:
        rng = self.rng
        pairs = self.base_pairs(path) if self.chance(0.5) else []
        for _ in range(rng.choice((0, 1, 1, 2, 3, 5, 8, 20, 70))):
            if names and self.chance(0.8):
                name = rng.choice(names)
            else:
                name = rng.choice(("x", "", "a" * 300, "<b>", "中", "client_id[]", "%", "\x00"))
            pairs.append((name, self.value(name)))
        if pairs and self.chance(0.4):
            # Mutate: replace, drop or duplicate some of the parameters.
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(pairs))
                op = rng.randrange(3)
                if op == 0:
                    pairs[i] = (pairs[i][0], self.value(pairs[i][0]))
                elif op == 1 and len(pairs) > 1:
                    pairs.pop(i)
                else:
                    name = pairs[i][0]
                    pairs.insert(rng.randrange(len(pairs) + 1), (name, self.value(name)))
        return pairs

    # -- bodies

    def body(self, pairs: list[tuple[str, str | bytes]]) -> tuple[bytes, bytes | None]:
        """(body, content type or None)."""
        rng = self.rng
        pick = rng.random()
        ctype: bytes | None
        if pick < 0.55:
            ctype = rng.choice(
                (
                    b"application/x-www-form-urlencoded",
                    b"application/x-www-form-urlencoded",
                    b"application/x-www-form-urlencoded; charset=utf-8",
                    b"application/x-www-form-urlencoded; charset=latin-1",
                    b"Application/X-WWW-Form-Urlencoded",
                    b"application/x-www-form-urlencoded; charset=\xff",
                )
            )
            return self.pairs_bytes(pairs), ctype
        if pick < 0.67:
            as_text = {
                name: v.decode("latin-1") if isinstance(v, bytes) else v for name, v in pairs
            }
            body = json.dumps(as_text, ensure_ascii=self.chance(0.5)).encode("utf-8", "replace")
            if self.chance(0.2):
                body = body[: rng.randrange(len(body) + 1)]
            return body, rng.choice((b"application/json", b"application/json; charset=utf-16"))
        if pick < 0.82:
            return self.multipart(pairs)
        if pick < 0.90:
            size = rng.choice((70_000, 200_000, 400_000))
            return b"x=" + b"y" * size, b"application/x-www-form-urlencoded"
        ctype = rng.choice(
            (
                None,
                b"application/octet-stream",
                b"text/plain",
                b"a/b/c",
                b"multipart/form-data",
                b"multipart/form-data; boundary=" + b"x" * 200,
                b"\xff\xfe",
                b"*/*",
            )
        )
        return rng.randbytes(rng.choice((0, 1, 100, 2000, 20_000))), ctype

    def multipart(self, pairs: list[tuple[str, str | bytes]]) -> tuple[bytes, bytes]:
        rng = self.rng
        boundary = rng.choice((b"fuzzboundary", b"x" * 70, b"a b", b"--", b""))
        parts = []
        for name, value in pairs:
            raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
            disposition = b'form-data; name="' + name.encode("utf-8", "replace") + b'"'
            if self.chance(0.15):
                disposition += b'; filename="' + self.text(0, 10).encode("utf-8", "replace") + b'"'
            parts.append(b"Content-Disposition: " + disposition + b"\r\n\r\n" + raw)
        if self.chance(0.2):
            parts.append(
                b"Content-Type: \xff\r\nContent-Disposition: x\r\n\r\n" + rng.randbytes(50)
            )
        body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
        if self.chance(0.85):
            body += b"--" + boundary + b"--\r\n"
        ctype = b"multipart/form-data; boundary=" + boundary
        if self.chance(0.1):
            ctype = b"multipart/form-data"
        return body, ctype

    # -- headers

    def authorization(self, client_id: str) -> bytes:
        m, rng = self.m, self.rng
        secret = m.clients.get(client_id, (None, ""))[0] or ""
        pick = rng.randrange(14)
        options = [
            b"Bearer " + m.access_token.encode(),
            b"Bearer " + m.id_token.encode(),
            b"Bearer " + m.refresh_token.encode(),
            b"Bearer " + self.jose().encode(),
            b"Bearer",
            b"bearer  " + self.text(0, 20).encode("utf-8", "replace") + b"  x",
            b"Basic " + base64.b64encode(f"{client_id}:{secret}".encode()),
            b"Basic " + base64.b64encode(f"{quote(client_id)}:{quote(secret)}x".encode()),
            b"Basic " + base64.b64encode(b"\xff\xfe:\xff"),
            b"Basic !!!",
            b"Basic " + base64.b64encode(b"no-colon"),
            b"Basic ",
            b"Digest username=x, " + b"a" * rng.choice((10, 100_000)),
            b"Bearer \xff\xfe" + rng.randbytes(10).replace(b"\r", b"").replace(b"\n", b""),
        ]
        return options[pick]

    def cookie(self) -> bytes:
        m, rng = self.m, self.rng
        genuine = "; ".join(f"{k}={v}" for k, v in m.cookies.items()).encode()
        options = [
            genuine,
            genuine + b"; qqb_session=" + self.text(0, 40).encode("utf-8", "replace"),
            b"qqb_session=" + b"A" * rng.choice((10, 43, 5000)),
            b"qqb_browser=" + b"-_" * 20,
            b'session=eyJ4IjoxfQ.Zz.forged; qqb_session="\\"',
            b"a=b; ;;=;=x; qqb_session",
            b"__Host-qqb_session=" + self.text(1, 30).encode("utf-8", "replace"),
            b"; ".join(b"c%d=%d" % (i, i) for i in range(rng.choice((50, 1000)))),
            b"qqb_session=\xff\xfe\x80",
        ]
        return rng.choice(options)

    def headers(self, client_id: str) -> list[tuple[bytes, bytes]]:
        m, rng = self.m, self.rng
        host = f"{m.host}:{m.port}".encode()
        if self.chance(0.03):
            host = rng.choice(
                (b"evil.test", b"", b"a" * 300, b"a" * 64 + b".test", b"127.0.0.1:1", b"[::1",
                 b"\xff", b"localhost:%d" % m.port, b"%s:%d" % (b"A" * 10, m.port))
            )  # fmt: skip
        headers = [] if self.chance(0.01) else [(b"Host", host)]
        headers.append((b"Connection", b"close"))
        extra: list[tuple[float, bytes, Callable[[], bytes]]] = [
            (0.35, b"Authorization", lambda: self.authorization(client_id)),
            (0.30, b"Cookie", self.cookie),
            (
                0.20,
                b"Accept-Language",
                lambda: rng.choice(
                    (
                        b"zh-CN,zh;q=0.9",
                        b"en-US,en;q=0.5",
                        b"*;q=abc",
                        b"en;q=",
                        b"x" * 5000,
                        b"\xff\xfe",
                        b",,,;;;",
                        b"zh-" * 1000,
                    )
                ),
            ),
            (
                0.15,
                b"User-Agent",
                lambda: rng.choice(
                    (b"Mozilla/5.0 (iPhone) Mobile", b"QQ/8.9", b"", b"\xff" * 10, b"A" * 10_000)
                ),
            ),
            (0.10, b"Origin", lambda: rng.choice((b"https://evil.test", b"null", b"\xff"))),
            (0.10, b"X-Forwarded-Proto", lambda: rng.choice((b"https", b"gopher", b"\xff"))),
            (0.10, b"X-Forwarded-Host", lambda: rng.choice((b"evil.test", b"a" * 1000))),
            (0.10, b"X-Forwarded-For", lambda: rng.choice((b"1.2.3.4, 5.6.7.8", b"x" * 500))),
            (
                0.10,
                b"X-Request-ID",
                lambda: rng.choice((b"abc-123", b"\xff\xfe", b"<b>", b"a" * 100)),
            ),
            (0.10, b"Accept", lambda: rng.choice((b"*/*", b"application/json", b"text/html;q=x"))),
            (
                0.05,
                b"Range",
                lambda: rng.choice(
                    (b"bytes=0-0", b"bytes=-1", b"bytes=99999999-", b"bytes=0-0," * 500, b"bytes=x")
                ),
            ),
            (0.05, b"If-None-Match", lambda: rng.choice((b'"x"', b"*", b"W/" * 100))),
            (0.05, b"If-Modified-Since", lambda: rng.choice((b"garbage", b"Thu, 01 Jan 1970"))),
            (0.03, b"Content-Encoding", lambda: rng.choice((b"gzip", b"br", b"x"))),
            (0.03, b"X-Huge", lambda: b"h" * rng.choice((8_000, 65_000, 200_000, 300_000))),
        ]
        for probability, name, make in extra:
            if self.chance(probability):
                headers.append((name, make()))
        if self.chance(0.02):
            headers += [(b"X-Many-%d" % i, b"v") for i in range(rng.choice((100, 500)))]
        if self.chance(0.04) and len(headers) > 2:
            headers.append(rng.choice(headers[1:]))  # a duplicated header
        return headers

    # -- the request

    def request(self) -> FuzzRequest:
        rng = self.rng
        if self.chance(0.85):
            path = rng.choice(sorted(ENDPOINTS))
            methods, names = ENDPOINTS[path]
        else:
            path, methods, names = rng.choice(UNKNOWN_PATHS), ("GET",), AUTHORIZE_PARAMS
        if self.chance(0.65):
            method = rng.choice(methods)
        else:
            method = rng.choice(METHODS if self.chance(0.9) else ODD_METHODS)
        cookie_override: bytes | None = None
        if path == "/qq/callback" and self.m.callbacks and self.chance(0.5):
            target_text, cookie = rng.choice(self.m.callbacks)
            genuine = parse_qs(urlsplit(target_text).query)
            pairs: list[tuple[str, str | bytes]] = [(k, v[0]) for k, v in genuine.items()]
            pairs += self.pairs(path, names)[: rng.randint(0, 2)]
            cookie_override = cookie.encode()
        else:
            pairs = self.pairs(path, names)
        client_id = next((str(v) for k, v in pairs if k == "client_id"), "rp-refresh")

        in_query, in_body = pairs, []
        if method in ("POST", "PUT", "PATCH") and self.chance(0.8):
            in_query, in_body = [], pairs
            if pairs and self.chance(0.1):  # one copy in the query, one in the body
                in_query = [rng.choice(pairs)]
        cap = MAX_PART_BYTES if self.chance(0.15) else 60_000  # mostly under the header cap
        query = self.pairs_bytes(in_query)[:cap] if in_query else b""
        target = (self.m.prefix + path).encode()
        if query or self.chance(0.05):
            target += b"?" + query
        if self.chance(0.02):
            target += b"#frag"

        headers = self.headers(client_id)
        if cookie_override is not None:
            headers = [h for h in headers if h[0] != b"Cookie"] + [(b"Cookie", cookie_override)]
        body = b""
        if in_body or (method not in ("GET", "HEAD") and self.chance(0.3)):
            body, ctype = self.body(in_body)
            body = body[:MAX_PART_BYTES]
            if ctype is not None:
                headers.append((b"Content-Type", ctype))
            if body and self.chance(0.05):
                headers.append((b"Expect", b"100-continue"))  # only with a body: RFC 9110
        elif self.chance(0.05):
            body = rng.randbytes(rng.randint(1, 200))  # a body on a GET
        version = b"HTTP/1.1"
        if self.chance(0.03):
            version = rng.choice((b"HTTP/1.0", b"HTTP/9.9", b"HTTP/1.1 x"))
        return FuzzRequest(
            index=self.index,
            method=method,
            target=target,
            headers=headers,
            body=body,
            chunked=bool(body) and self.chance(0.05),
            version=version,
            tags=frozenset(self.tags),
        )


def generate(material: Material, seed: int, index: int) -> FuzzRequest:
    return Generator(material, seed, index).request()


# --------------------------------------------------------------------------- login flows


_FLOW = frozenset({"login-flow"})


def login_flow(material: Material, emulator: EmulatorLike, seed: int, index: int) -> list[Outcome]:
    """A real login with a random upstream fault and a possibly mangled callback.

    Every broker answer on the way is returned for checking (upstream errors must fail
    closed with an error redirect, never a 5xx: checklist UP-06).
    """
    gen = Generator(material, seed, index)
    rng = gen.rng
    faults = rng.choice(EMULATOR_FAULTS)
    user = rng.choice(USERS)
    try:
        emulator.control(auto_login=user, faults=faults)
    except requests.HTTPError:  # an emulator without value faults
        faults = {}
        emulator.control(auto_login=user, faults=faults)
    client_id = rng.choice(sorted(material.clients))
    pairs: list[tuple[str, str | bytes]] = [
        (k, v) for k, v in gen.base_pairs("/authorize") if k not in ("client_id", "redirect_uri")
    ]
    pairs += [("client_id", client_id), ("redirect_uri", material.clients[client_id][1])]
    if gen.chance(0.3):
        pairs.append(
            rng.choice(
                (
                    ("response_mode", "form_post"),
                    ("prompt", "login"),
                    ("max_age", "0"),
                    ("claims", '{"userinfo":{"nickname":null}}'),
                    ("display", "touch"),
                    ("ui_locales", "en"),
                )
            )
        )
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs if isinstance(v, str))
    host = f"{material.host}:{material.port}".encode()

    def broker_get(target: str, cookie: str = "") -> Outcome:
        headers = [(b"Host", host), (b"Connection", b"close")]
        if cookie:
            headers.append((b"Cookie", cookie.encode()))
        return send(
            material,
            FuzzRequest(
                index,
                "GET",
                target.encode(),
                headers,
                tags=frozenset({"login-flow", *(f"fault:{k}={v[:40]}" for k, v in faults.items())}),
            ),
        )

    outcomes = [broker_get(f"{material.prefix}/authorize?{query}")]
    start = outcomes[0]
    if not start.location.startswith(material.emulator_url):
        return outcomes
    cookie = "; ".join(c.split(";", 1)[0] for c in start.set_cookies)
    at_qq = requests.get(start.location, allow_redirects=False, timeout=REQUEST_TIMEOUT)
    location = at_qq.headers.get("Location", "")
    if not location.startswith(material.issuer):
        return outcomes
    callback = urlsplit(location)
    callback_query = callback.query
    if gen.chance(0.3):
        callback_query = rng.choice(
            (
                callback_query + "&state=x",
                callback_query + "&code=y",
                "code=abc&" + callback_query,
                callback_query.replace("code=", "code=%00"),
                callback_query + "&usercancel=1",
                callback_query.replace("code=", "code=" + "A" * 200),
                callback_query + "&" + "x=" * 100,
            )
        )
    outcomes.append(broker_get(f"{callback.path}?{callback_query}", cookie))
    return outcomes


# --------------------------------------------------------------------------- the run


def rss_bytes() -> int:
    """This process's resident set size (the broker runs in it), from /proc or rusage."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass
class Report:
    seed: int
    sent: int = 0
    statuses: Counter[int | None] = field(default_factory=Counter)
    paths: Counter[str] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    failure_count: int = 0
    known: Counter[str] = field(default_factory=Counter)
    slowest: list[tuple[float, str]] = field(default_factory=list)
    rss_start: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    seconds: float = 0.0

    @property
    def rss_growth(self) -> int:
        return max(self.rss_peak, self.rss_end) - self.rss_start

    def summary(self) -> str:
        statuses = ", ".join(
            f"{status}: {count}"
            for status, count in sorted(
                self.statuses.items(), key=lambda item: (item[0] is None, item[0] or 0)
            )
        )
        lines = [
            f"seed={self.seed}: {self.sent} requests in {self.seconds:.1f} s "
            f"({self.sent / max(self.seconds, 1e-9):.0f}/s), {self.failure_count} failure(s)",
            f"statuses: {statuses}",
            f"RSS: start {self.rss_start >> 20} MiB, peak {self.rss_peak >> 20} MiB, "
            f"end {self.rss_end >> 20} MiB (growth {self.rss_growth >> 20} MiB)",
        ]
        if self.known:
            lines.append(
                "known issues (5xx, see KNOWN_ISSUES): "
                + ", ".join(f"{tag}: {n}" for tag, n in sorted(self.known.items()))
            )
        if self.slowest:
            lines.append("slowest: " + "; ".join(f"{s:.2f} s {d[:120]}" for s, d in self.slowest))
        lines += self.failures
        return "\n".join(lines)


def run(
    material: Material,
    *,
    seed: int,
    max_requests: int,
    max_seconds: float,
    workers: int = 4,
    emulator: EmulatorLike | None = None,
    flow_share: float = 0.03,
    keep_failures: int = 20,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Send up to ``max_requests`` (login flows count per broker request) within about
    ``max_seconds``; never raises for what the broker answers, reports it instead."""
    report = Report(seed=seed)
    lock = threading.Lock()
    counter = itertools.count()
    steady_malloc()
    gc.collect()
    trim_malloc()
    report.rss_start = report.rss_peak = rss_bytes()
    started = time.monotonic()
    deadline = started + max_seconds

    def record(outcomes: list[Outcome]) -> None:
        with lock:
            for outcome in outcomes:
                report.sent += 1
                report.statuses[outcome.status] += 1
                report.paths[outcome.request.path] += 1
                report.tags.update(outcome.request.tags)
                tag = known_issue(outcome)
                found = [] if tag else problems(outcome, material.forbidden)
                if tag:
                    report.known[tag] += 1
                if found:
                    report.failure_count += 1
                    if len(report.failures) < keep_failures:
                        report.failures.append(
                            f"FAIL seed={seed} index={outcome.request.index}: {'; '.join(found)}"
                            f" <- {outcome.request.describe()}"
                        )
                report.slowest.append((outcome.elapsed, outcome.request.describe(100)))
                report.slowest = sorted(report.slowest, reverse=True)[:3]

    def worker() -> None:
        while True:
            index = next(counter)
            if index >= max_requests or time.monotonic() > deadline:
                return
            is_flow = (
                emulator is not None and random.Random(f"{seed}:{index}:flow").random() < flow_share
            )
            request = generate(material, seed, index)
            try:
                if is_flow:
                    assert emulator is not None
                    outcomes = login_flow(material, emulator, seed, index)
                else:
                    outcomes = [send(material, request)]
            except Exception as exc:  # a timeout or a refused connection is a finding
                if is_flow:
                    request = FuzzRequest(index, "GET", b"(login flow)", [], tags=_FLOW)
                outcomes = [Outcome(request, None, b"", 0.0, f"{type(exc).__name__}: {exc}")]
            record(outcomes)
            if index % 50 == 0:
                rss = rss_bytes()
                with lock:
                    report.rss_peak = max(report.rss_peak, rss)
                    if progress is not None:
                        report.seconds = time.monotonic() - started
                        progress(report)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    if emulator is not None:
        emulator.reset()
    report.seconds = time.monotonic() - started
    gc.collect()
    trim_malloc()
    report.rss_end = rss_bytes()
    report.rss_peak = max(report.rss_peak, report.rss_end)
    return report


def _libc() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def steady_malloc() -> None:
    """Make RSS track live memory (glibc only; elsewhere a no-op).

    glibc raises its mmap threshold after large blocks are freed and keeps one arena per
    thread, so a burst of big requests leaves RSS high for good without any leak. A fixed
    threshold hands big buffers back to the kernel on free, so what RSS keeps is live.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 128 * 1024)


def trim_malloc() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
