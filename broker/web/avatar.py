"""``GET {issuer}/avatar/<token>``: QQ avatars served over the broker's own https.

``claims.picture: proxy`` puts signed URLs (:mod:`broker.oidc.avatars`) in ``picture``,
so an https relying party shows no mixed content and a pairwise client never sees an
avatar URL with the OpenID in it. Serving them makes the broker fetch URLs it got from
QQ, so the fetch is the SSRF surface of checklist UP-12 and is fenced accordingly:

* only URLs the broker sealed itself (AES-GCM: a changed byte is a 404), and of those
  only QQ's avatar hosts (``*.qlogo.cn`` on the default port), checked again here;
* the host is resolved once, every address must be public (no loopback, private,
  link-local, multicast or reserved ranges), and the connection goes to that checked
  address (TLS still verifies the host name), so DNS rebinding cannot redirect it.
  Only development's ``claims.avatar_hosts`` (the emulator on 127.0.0.1) skip the
  address check, and a production issuer cannot have any;
* redirects are never followed (a 3xx is a 502);
* connect and read timeouts, plus a watchdog that cuts the socket at a total deadline,
  so neither a slow TLS handshake nor a dribbling body can hold a worker thread;
* at most :data:`MAX_AVATAR_BYTES`, read in chunks and abandoned beyond, no content
  encoding, a declared ``image/{jpeg,png,gif,webp}`` type and matching magic bytes; the
  type served is the one the bytes show, with ``nosniff`` and a CSP that allows nothing.

Upstream failures answer 404 (QQ said 404) or 502, never 500. Images are cached in an
in-process LRU (entries, bytes and age bounded), one per instance: each instance of a
scaled-out broker fetches an avatar at most once per :data:`CACHE_TTL`. Failures are
remembered for :data:`FAILURE_TTL`, and concurrent requests for one uncached avatar share
one fetch, so neither a page of avatars nor a broken one multiplies the calls to QQ.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import Blueprint, Flask, Response, current_app

from broker import __version__
from broker.oidc.avatars import (
    AvatarHosts,
    AvatarTokenExpired,
    AvatarTokenInvalid,
    AvatarUrls,
    effective_port,
    split_url,
)
from broker.oidc.claims import HTTPS_CAPABLE_AVATAR_HOSTS

log = logging.getLogger("broker.avatar")

bp = Blueprint("avatar", __name__)
EXTENSION = "qq_oidc_broker.avatar_proxy"

#: QQ's avatars are a few kB (640 px at most); anything near this is not an avatar.
MAX_AVATAR_BYTES = 1024 * 1024
#: How long an image is kept in memory, and the most a browser or CDN may keep it.
CACHE_TTL = 3600
CACHE_MAX_ENTRIES = 1024
CACHE_MAX_BYTES = 32 * 1024 * 1024
#: How long a failed fetch is remembered (and answered from memory).
FAILURE_TTL = 30
#: Declared types accepted (``image/jpg`` is a common misspelling of jpeg).
DECLARED_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "image/gif", "image/webp"})
#: Nothing in the response may run or load anything, even when opened as a page.
AVATAR_CSP = "default-src 'none'; sandbox"
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchLimits:
    """Seconds and bytes that bound one upstream fetch."""

    connect_timeout: float = 3.0
    read_timeout: float = 5.0
    total_timeout: float = 10.0
    max_bytes: int = MAX_AVATAR_BYTES


@dataclass(frozen=True)
class Avatar:
    content_type: str
    body: bytes


class AvatarUnavailable(Exception):
    """The avatar cannot be served: ``status`` is 404 or 502, ``reason`` is for the log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_public_address(address: str) -> bool:
    """A globally routable unicast address; IPv4-mapped IPv6 is judged as the IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def sniffed_type(body: bytes) -> str | None:
    """The image type the bytes themselves show, if it is one we serve."""
    if body.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if body.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "image/webp"
    return None


class _Deadline:
    """The total time bound of one fetch: a timer shuts the sockets down when it passes,
    which wakes any blocked connect, handshake or read (per-call timeouts alone restart
    with every byte a slow server sends)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            raise AvatarUnavailable(502, "upstream too slow (total deadline)")
        return left

    def guard(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            if self.expired:
                sock.close()
                raise AvatarUnavailable(502, "upstream too slow (total deadline)")
            self._sockets.append(sock)
        return sock

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):  # already closed: nothing to wake
                    sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address that was checked, whatever DNS says a moment later."""

    def __init__(self, host: str, port: int, address: str, timeout: float, deadline: _Deadline):
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._deadline = deadline

    def _open(self) -> socket.socket:
        timeout = min(self.timeout, self._deadline.remaining())  # type: ignore[type-var]
        return self._deadline.guard(socket.create_connection((self._address, self.port), timeout))

    def connect(self) -> None:
        self.sock = self._open()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """As :class:`_PinnedHTTPConnection`, with TLS verified against the host name."""

    default_port = http.client.HTTPS_PORT

    def __init__(
        self,
        host: str,
        port: int,
        address: str,
        timeout: float,
        deadline: _Deadline,
        context: ssl.SSLContext,
    ):
        super().__init__(host, port, address, timeout, deadline)
        self._tls = context

    def connect(self) -> None:
        self.sock = self._tls.wrap_socket(self._open(), server_hostname=self.host)


class AvatarFetcher:
    """One GET of an allowed avatar URL within :class:`FetchLimits`; no redirects."""

    def __init__(
        self,
        hosts: AvatarHosts,
        limits: FetchLimits | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.hosts = hosts
        self.limits = limits or FetchLimits()
        self._tls = tls_context or ssl.create_default_context()

    def fetch(self, url: str) -> Avatar:
        """The image at ``url``; raises :class:`AvatarUnavailable` (never anything else
        for an upstream failure)."""
        target = self._target(url)
        deadline = _Deadline(self.limits.total_timeout)
        try:
            return self._get(target, deadline)
        except AvatarUnavailable:
            raise
        except (OSError, http.client.HTTPException, ValueError) as err:
            if deadline.expired:
                raise AvatarUnavailable(502, "upstream too slow (total deadline)") from None
            raise AvatarUnavailable(502, f"upstream failed: {type(err).__name__}") from None
        finally:
            deadline.cancel()

    def _target(self, url: str) -> str:
        """The URL to fetch: allowed, and https for QQ's host that has it (qq-connect §4)."""
        parts = split_url(url)
        if parts is None or not self.hosts.allows(url):
            raise AvatarUnavailable(404, "not an allowed avatar host")
        hostname = parts.hostname or ""
        if parts.scheme == "http" and parts.port is None and hostname in HTTPS_CAPABLE_AVATAR_HOSTS:
            return urlunsplit(("https", *parts[1:]))
        return url

    def _get(self, url: str, deadline: _Deadline) -> Avatar:
        parts = urlsplit(url)
        host, port = parts.hostname or "", effective_port(parts)
        addresses = self._resolve(host, port, deadline)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        headers = {
            "Accept": "image/webp,image/png,image/jpeg,image/gif",
            "Accept-Encoding": "identity",
            "User-Agent": f"qq-oidc-broker/{__version__} (avatar proxy)",
        }
        conn = self._connect(parts.scheme, host, port, addresses, deadline)
        try:
            conn.request("GET", path, headers=headers)
            if conn.sock is not None:
                conn.sock.settimeout(min(self.limits.read_timeout, deadline.remaining()))
            response = conn.getresponse()
            return self._read(response, conn, deadline)
        finally:
            conn.close()

    def _resolve(self, host: str, port: int, deadline: _Deadline) -> list[str]:
        """Every address of ``host``; all must be public unless it is a development host.

        ``getaddrinfo`` has no timeout of its own, so it runs in a daemon thread that
        the fetch stops waiting for at the deadline.
        """
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = self._lookup(host, port, deadline)
        if not addresses:
            raise AvatarUnavailable(502, "the avatar host has no address")
        if not self.hosts.is_extra(host, port) and not all(map(is_public_address, addresses)):
            raise AvatarUnavailable(502, "the avatar host resolves to a non-public address")
        return addresses

    def _lookup(self, host: str, port: int, deadline: _Deadline) -> list[str]:
        found: list[str] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                found.extend(str(info[4][0]) for info in infos)
            except (OSError, UnicodeError) as err:
                failure.append(err)

        worker = threading.Thread(target=run, name="avatar-dns", daemon=True)
        worker.start()
        worker.join(min(self.limits.connect_timeout, deadline.remaining()))
        if worker.is_alive():
            raise AvatarUnavailable(502, "the avatar host did not resolve in time")
        if failure:
            raise AvatarUnavailable(502, "the avatar host does not resolve")
        return list(dict.fromkeys(found))

    def _connect(
        self, scheme: str, host: str, port: int, addresses: list[str], deadline: _Deadline
    ) -> _PinnedHTTPConnection:
        last: Exception | None = None
        for address in addresses:
            conn: _PinnedHTTPConnection
            if scheme == "https":
                conn = _PinnedHTTPSConnection(
                    host, port, address, self.limits.connect_timeout, deadline, self._tls
                )
            else:
                conn = _PinnedHTTPConnection(
                    host, port, address, self.limits.connect_timeout, deadline
                )
            try:
                conn.connect()
                return conn
            except OSError as err:
                conn.close()
                last = err
        raise AvatarUnavailable(502, f"cannot connect: {type(last).__name__}")

    def _read(
        self, response: http.client.HTTPResponse, conn: _PinnedHTTPConnection, deadline: _Deadline
    ) -> Avatar:
        if response.status in (404, 410):
            raise AvatarUnavailable(404, f"upstream {response.status}")
        if 300 <= response.status < 400:
            raise AvatarUnavailable(502, f"upstream redirect {response.status} not followed")
        if response.status != 200:
            raise AvatarUnavailable(502, f"upstream status {response.status}")
        declared = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if declared not in DECLARED_TYPES:
            raise AvatarUnavailable(502, "upstream content type is not an image we serve")
        encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise AvatarUnavailable(502, "upstream sent an encoded body")
        limit = self.limits.max_bytes
        length = response.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            raise AvatarUnavailable(502, "upstream image too large")
        body = bytearray()
        while True:
            if conn.sock is not None:
                conn.sock.settimeout(min(self.limits.read_timeout, deadline.remaining()))
            chunk = response.read(min(_CHUNK, limit + 1 - len(body)))
            if not chunk:
                break
            body += chunk
            if len(body) > limit:
                raise AvatarUnavailable(502, "upstream image too large")
        if deadline.expired:  # the watchdog's shutdown reads as the end of the body
            raise AvatarUnavailable(502, "upstream too slow (total deadline)")
        content_type = sniffed_type(bytes(body))
        if content_type is None:
            raise AvatarUnavailable(502, "upstream body is not a jpeg, png, gif or webp image")
        return Avatar(content_type, bytes(body))


@dataclass
class AvatarCache:
    """A thread-safe LRU bounded by entries, total bytes and age (per process)."""

    max_entries: int = CACHE_MAX_ENTRIES
    max_bytes: int = CACHE_MAX_BYTES
    ttl: float = CACHE_TTL
    clock: Callable[[], float] = time.monotonic
    _items: OrderedDict[str, tuple[float, Avatar]] = field(default_factory=OrderedDict)
    _bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: str) -> Avatar | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            stored_at, avatar = item
            if self.clock() - stored_at >= self.ttl:
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return avatar

    def put(self, key: str, avatar: Avatar) -> None:
        if len(avatar.body) > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self._drop(key)
            self._items[key] = (self.clock(), avatar)
            self._bytes += len(avatar.body)
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        _, avatar = self._items.pop(key)
        self._bytes -= len(avatar.body)


@dataclass
class _Failures:
    """Recent upstream failures, so a broken or slow avatar is not fetched on every page
    load (each attempt may hold a worker thread up to the total deadline)."""

    ttl: float = FAILURE_TTL
    max_entries: int = CACHE_MAX_ENTRIES
    clock: Callable[[], float] = time.monotonic
    _items: OrderedDict[str, tuple[float, AvatarUnavailable]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: str) -> AvatarUnavailable | None:
        with self._lock:
            item = self._items.get(key)
            if item is None or self.clock() - item[0] >= self.ttl:
                self._items.pop(key, None)
                return None
            return item[1]

    def put(self, key: str, failure: AvatarUnavailable) -> None:
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = (self.clock(), failure)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)


@dataclass
class _Flight:
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: int = 0


class AvatarProxy:
    """Opens a token, serves the image from the cache or from QQ.

    Concurrent requests for one uncached avatar (an RP page listing the same user
    twice, several tabs) make one upstream fetch: the others wait for it.
    """

    def __init__(
        self,
        urls: AvatarUrls,
        fetcher: AvatarFetcher | None = None,
        cache: AvatarCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.urls = urls
        self.fetcher = fetcher or AvatarFetcher(urls.hosts)
        self.cache = cache or AvatarCache()
        self.failures = _Failures()
        self._clock = clock
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()

    def respond(self, token: str) -> Response:
        try:
            upstream, expires_at = self.urls.open(token)
        except AvatarTokenInvalid:
            return _plain(404, "Not Found")
        except AvatarTokenExpired:
            return _plain(410, "This avatar URL has expired; read the picture claim again")
        try:
            avatar = self._load(upstream)
        except AvatarUnavailable as err:
            return _plain(err.status, "Not Found" if err.status == 404 else "Bad Gateway")
        max_age = max(0, min(CACHE_TTL, expires_at - int(self._clock())))
        response = Response(avatar.body, mimetype=avatar.content_type)
        response.headers["Cache-Control"] = f"public, max-age={max_age}"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = AVATAR_CSP
        # Relying parties embed it from their own origin.
        response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
        return response

    def _load(self, upstream: str) -> Avatar:
        """From the cache, else from upstream, one fetch per URL at a time."""
        known = self._known(upstream)
        if known is not None:
            return known
        with self._flights_lock:
            flight = self._flights.setdefault(upstream, _Flight())
            flight.waiting += 1
        try:
            with flight.lock:
                known = self._known(upstream)  # fetched while this request waited
                if known is not None:
                    return known
                try:
                    avatar = self.fetcher.fetch(upstream)
                except AvatarUnavailable as err:
                    # The host only: the path of an older avatar URL holds the OpenID.
                    host = urlsplit(upstream).hostname or "?"
                    log.warning("avatar from %s not served: %s", host, err.reason)
                    self.failures.put(upstream, err)
                    raise
                self.cache.put(upstream, avatar)
                return avatar
        finally:
            with self._flights_lock:
                flight.waiting -= 1
                if flight.waiting == 0:
                    del self._flights[upstream]

    def _known(self, upstream: str) -> Avatar | None:
        """The cached image; raises the cached failure."""
        avatar = self.cache.get(upstream)
        if avatar is not None:
            return avatar
        failure = self.failures.get(upstream)
        if failure is not None:  # a fresh exception: threads may raise it at once
            raise AvatarUnavailable(failure.status, failure.reason)
        return None


def _plain(status: int, text: str) -> Response:
    response = Response(text, status=status, mimetype="text/plain")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = AVATAR_CSP
    return response


@bp.get("/avatar/<token>")
def avatar(token: str) -> Response:
    proxy: AvatarProxy = current_app.extensions[EXTENSION]
    return proxy.respond(token)


def install_avatar_proxy(app: Flask, urls: AvatarUrls, **options: Any) -> AvatarProxy:
    """Serve ``/avatar/<token>`` for the URLs ``urls`` seals (``claims.picture: proxy``)."""
    proxy = AvatarProxy(urls, **options)
    app.extensions[EXTENSION] = proxy
    app.register_blueprint(bp)
    return proxy
