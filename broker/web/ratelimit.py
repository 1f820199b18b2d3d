"""Request rate limiting: DESIGN.md ``rate_limits``, security checklist DO-03.

What is limited (fixed windows; the numbers are the constants below):

* ``/authorize`` and ``/qq/callback``: per client IP, 120 requests a minute each. Each
  request costs a pending-login row or upstream calls to QQ. Higher than a typical
  API limit on purpose: many QQ users sit behind carrier-grade NAT, so one IP can
  be hundreds of people.
* ``/token``, ``/revoke``, ``/introspect``: per client IP, 600 requests a minute each
  (relying parties are servers, and several of them often share one egress IP),
  and at ``/token`` also per presented ``client_id``, 300 a minute (about 5 logins or
  refreshes a second for one relying party).
* Failures, the brute-force guard (DO-03): a failed client authentication (401, or
  400 ``invalid_client``) at any of the three machine endpoints, or an
  ``invalid_grant`` at ``/token`` (a wrong code, refresh token or PKCE verifier),
  counts against the client IP. After 30 failures in a minute, that IP gets 429 at
  all three endpoints until the window ends, whether its next request would have
  succeeded or not. Failures are counted from the response in an ``after_request``
  hook, so the protocol code does not need to know about the limiter.

Over a limit the answer is HTTP 429 with ``Retry-After`` (seconds to the end of the
window): the HTML error page for the browser endpoints, and an RFC 6749 §5.2-shaped
JSON body (``temporarily_unavailable``) for the machine endpoints. Crossing a limit is
logged once per window per key at WARNING, with the IP and ``client_id`` but never a
secret. With Redis, "once" holds across instances too, because the log line is tied
to the counter value that crossed the limit.

Why this is hand-written and does not use the ``limits`` package: we need a fixed-window
counter behind a one-method interface with small backends, each about a hundred
lines. ``limits`` 5.8 (the version the package mirror has) pins ``redis<8`` for its
Redis backend, while the broker already depends on redis-py 8. Its memory backend
also grows with the number of distinct keys until they expire and runs a timer thread,
where we want a hard bound. And we would still wrap it for Redis outages. So a
dependency would bring three more packages and save little code.

Algorithm: fixed windows aligned to the epoch (``floor(now / window)``), so every
instance agrees on the window without coordination (clocks kept by NTP). The
known weakness of fixed windows is that up to twice a limit can pass in a burst
that straddles a boundary. The limits are sized with that in mind: 60 failures a
minute at worst is still far below the "1,000 per minute" of DO-03.

Storage (``rate_limits.storage``):

* ``memory``: counted on this machine, bounded by ``MEMORY_MAX_KEYS``. When the store
  is full, the oldest counter is evicted, so random source addresses cannot make it
  grow without bound. An attacker with that many addresses is beyond what per-IP
  limits can stop anyway. Where they live depends on ``server.workers``:

  - one process (``workers: 1``, ``dev``, tests that build the app in-process):
    :class:`MemoryCounters`, a dict in the process, thread-safe. Expired windows are
    dropped from the oldest end on every call.
  - several workers (``serve`` with ``workers`` > 1, the default ``auto`` on a machine
    with several cores): :class:`~broker.web.ratelimit_shared.SharedCounters`, one
    table in a file every worker maps, created by the ``serve`` parent and passed to
    ``create_app(shared_counters=...)``. The limits stay exact across the workers; an
    attacker does not get one set of limits per worker.
* ``redis://host:port/db``: counters shared by every instance, ``INCRBY`` + ``EXPIREAT``
  in one pipelined transaction per request, keys under ``qqb:rl:``.
  If Redis is unreachable or errors, the request is never failed and never blocked
  because of it. The broker logs one WARNING, counts on this machine instead (in the
  workers' shared table when there is one, else in the process's memory), and tries
  Redis again after ``REDIS_RETRY_SECONDS``. That is fail-open for the shared counters,
  but not a free pass: an outage (or an attacker who can cause one) does not also
  switch off the brute-force guard. Local counts can only be lower than the shared
  ones, so no client is refused that Redis would have let through.

``rate_limits.enabled: false`` installs nothing: no hooks, no counters.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import unquote, urlsplit

import redis
from flask import Flask, Response, request

from broker.config import RateLimitConfig
from broker.oidc.errors import json_error
from broker.web.pages import error_page
from broker.web.ratelimit_shared import SharedCounters

__all__ = [
    "AUTHORIZE_PER_IP",
    "CALLBACK_PER_IP",
    "ENDPOINT_PER_IP",
    "FAILURES_PER_IP",
    "KEY_PREFIX",
    "MEMORY_MAX_KEYS",
    "TOKEN_PER_CLIENT",
    "Counters",
    "Hit",
    "Limit",
    "MemoryCounters",
    "RateLimiter",
    "RateLimits",
    "RedisCounters",
    "SharedCounters",
    "install_rate_limiter",
]

log = logging.getLogger("broker.ratelimit")


@dataclass(frozen=True)
class Limit:
    """At most ``requests`` per ``window`` seconds."""

    requests: int
    window: int

    def __post_init__(self) -> None:
        if self.requests < 1 or self.window < 1:
            raise ValueError("a limit needs at least 1 request per window of at least 1 s")


#: ``/authorize`` per client IP.
AUTHORIZE_PER_IP: Final = Limit(120, 60)
#: ``/qq/callback`` per client IP.
CALLBACK_PER_IP: Final = Limit(120, 60)
#: Each of ``/token``, ``/revoke``, ``/introspect`` per client IP.
ENDPOINT_PER_IP: Final = Limit(600, 60)
#: ``/token`` per presented ``client_id`` (not verified: counting only).
TOKEN_PER_CLIENT: Final = Limit(300, 60)
#: Failed client authentications and ``invalid_grant`` answers per client IP (DO-03).
FAILURES_PER_IP: Final = Limit(30, 60)
#: Every counter key starts with this (shared Redis: one namespace per broker).
KEY_PREFIX: Final = "qqb:rl:"
#: Upper bound of counters the memory store keeps (about 200 bytes each).
MEMORY_MAX_KEYS: Final = 100_000
#: Redis connect/read timeout in seconds: an unresponsive Redis must not stall logins.
REDIS_TIMEOUT: Final = 0.5
#: After a Redis error, count in memory for this long before trying Redis again.
REDIS_RETRY_SECONDS: Final = 10.0

_BROWSER_PATHS: Final = {"/authorize": "authorize", "/qq/callback": "callback"}
_MACHINE_PATHS: Final = {"/token": "token", "/revoke": "revoke", "/introspect": "introspect"}
_FAILURE_ERRORS: Final = frozenset({"invalid_client", "invalid_grant"})
_MAX_ID_CHARS: Final = 128


@dataclass(frozen=True)
class RateLimits:
    """The limits in force; the defaults are the module constants. Tests inject small ones."""

    authorize: Limit = AUTHORIZE_PER_IP
    callback: Limit = CALLBACK_PER_IP
    endpoint: Limit = ENDPOINT_PER_IP
    token_client: Limit = TOKEN_PER_CLIENT
    failures: Limit = FAILURES_PER_IP
    key_prefix: str = KEY_PREFIX


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class Hit:
    """Add ``amount`` to counter ``key`` (0: only read it); the counter is gone after
    ``expires_at`` (epoch seconds, the end of its window)."""

    key: str
    expires_at: float
    amount: int = 1


class Counters(Protocol):
    """The one interface a counter store implements."""

    def add(self, hits: Sequence[Hit]) -> list[int]:
        """Apply every hit; return each counter's value afterwards (0 for a missing one)."""
        ...


class _Entry:
    __slots__ = ("count", "expires_at")

    def __init__(self, expires_at: float) -> None:
        self.count = 0
        self.expires_at = expires_at


class MemoryCounters:
    """Per-process counters: thread-safe, never more than ``max_keys`` of them."""

    def __init__(
        self, max_keys: int = MEMORY_MAX_KEYS, clock: Callable[[], float] = time.time
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def add(self, hits: Sequence[Hit]) -> list[int]:
        now = self._clock()
        with self._lock:
            self._drop_expired(now)
            return [self._add(hit, now) for hit in hits]

    def _add(self, hit: Hit, now: float) -> int:
        entry = self._entries.get(hit.key)
        if entry is not None and entry.expires_at <= now:
            del self._entries[hit.key]
            entry = None
        if entry is None:
            if hit.amount == 0:
                return 0
            while len(self._entries) >= self._max_keys:
                self._entries.popitem(last=False)  # full: the oldest counter goes
            entry = self._entries[hit.key] = _Entry(hit.expires_at)
        entry.count += hit.amount
        return entry.count

    def _drop_expired(self, now: float) -> None:
        """Insertion order is nearly expiry order (windows are aligned), so expired
        counters collect at the front: amortised O(1) per call."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                return
            del self._entries[key]


class RedisCounters:
    """Counters shared through Redis; falls back to memory while Redis is unavailable."""

    def __init__(
        self,
        url: str,
        *,
        fallback: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis: redis.Redis = redis.Redis.from_url(
            url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
        )
        self._fallback = fallback if fallback is not None else MemoryCounters()
        self._clock = clock
        self._where = _redis_location(url)
        self._lock = threading.Lock()
        self._down_until: float | None = None

    def add(self, hits: Sequence[Hit]) -> list[int]:
        if self._down_until is not None and self._clock() < self._down_until:
            return self._fallback.add(hits)
        try:
            results = self._execute(hits)
        except (redis.RedisError, OSError, ValueError) as err:
            self._went_down(err)
            return self._fallback.add(hits)
        self._came_back()
        return results

    def _execute(self, hits: Sequence[Hit]) -> list[int]:
        pipe = self._redis.pipeline(transaction=True)
        for hit in hits:
            if hit.amount:
                pipe.incrby(hit.key, hit.amount)
                pipe.expireat(hit.key, math.ceil(hit.expires_at))
            else:
                pipe.get(hit.key)
        replies = iter(pipe.execute())
        counts = []
        for hit in hits:
            reply = next(replies)
            if hit.amount:
                next(replies)  # EXPIREAT's answer
            counts.append(int(reply) if reply is not None else 0)
        return counts

    def _went_down(self, err: Exception) -> None:
        with self._lock:
            first = self._down_until is None
            self._down_until = self._clock() + REDIS_RETRY_SECONDS
        if first:
            log.warning(
                "rate_limits: Redis at %s is unavailable (%s); counting in this process "
                "until it answers again (retried every %.0f s); requests are still served",
                self._where,
                type(err).__name__,
                REDIS_RETRY_SECONDS,
            )

    def _came_back(self) -> None:
        if self._down_until is None:
            return
        with self._lock:
            if self._down_until is None:
                return
            self._down_until = None
        log.info("rate_limits: Redis at %s answers again; counters are shared", self._where)


def _redis_location(url: str) -> str:
    """``host:port/db`` for the log: never the password a Redis URL may carry."""
    parts = urlsplit(url)
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{parts.hostname}:{port}{parts.path or '/0'}"


# --------------------------------------------------------------------------- limiter


@dataclass(frozen=True)
class _Counter:
    """One counter a request touches: its key, its limit and how to describe it in logs."""

    name: str
    ident: str
    limit: Limit
    subject: str
    amount: int = 1

    def hit(self, prefix: str, now: float) -> Hit:
        start = self.window_start(now)
        key = f"{prefix}{self.name}:{self.ident}:{start}"
        return Hit(key, start + self.limit.window, self.amount)

    def window_start(self, now: float) -> int:
        return math.floor(now / self.limit.window) * self.limit.window

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(self.window_start(now) + self.limit.window - now))


class RateLimiter:
    """Flask hooks: ``check`` before a request, ``record_failure`` after it."""

    def __init__(
        self,
        counters: Counters,
        limits: RateLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.counters = counters
        self.limits = limits if limits is not None else RateLimits()
        self._clock = clock
        self._proxy_noted = False

    def init_app(self, app: Flask) -> None:
        app.before_request(self.check)
        app.after_request(self.record_failure)
        app.extensions["qq_oidc_broker.rate_limiter"] = self

    def check(self) -> Response | None:
        """Count the request; a 429 when one of its counters is over its limit."""
        counters = self._counters_for(request.path)
        if not counters:
            return None
        now = self._clock()
        counts = self.counters.add([c.hit(self.limits.key_prefix, now) for c in counters])
        retry_after = 0
        for counter, count in zip(counters, counts, strict=True):
            if counter.amount == 0:  # the failure counter: read, not counted here
                over = count >= counter.limit.requests
            else:
                over = count > counter.limit.requests
                if count == counter.limit.requests + 1:
                    log.warning(
                        "rate limit: more than %d %s requests in %d s from %s; "
                        "answering 429 until the window ends",
                        counter.limit.requests,
                        request.path,
                        counter.limit.window,
                        counter.subject,
                    )
            if over:
                retry_after = max(retry_after, counter.retry_after(now))
        return _too_many(retry_after) if retry_after else None

    def record_failure(self, response: Response) -> Response:
        """DO-03: count failed client authentication and invalid grants per IP."""
        if request.path not in _MACHINE_PATHS or not _is_failure(response):
            return response
        counter = self._failure_counter(_client_ip())
        now = self._clock()
        (count,) = self.counters.add([counter.hit(self.limits.key_prefix, now)])
        if count == counter.limit.requests:
            log.warning(
                "rate limit: %d failed client authentications or invalid grants in %d s "
                "from %s (latest at %s); its token, revocation and introspection requests "
                "get 429 until the window ends",
                count,
                counter.limit.window,
                counter.subject,
                request.path,
            )
        return response

    def _counters_for(self, path: str) -> list[_Counter]:
        limits = self.limits
        if path in _BROWSER_PATHS:
            name = _BROWSER_PATHS[path]
            ip = _client_ip()
            limit = limits.authorize if name == "authorize" else limits.callback
            self._note_proxy()
            return [_Counter(name, ip, limit, f"ip {ip}")]
        if path not in _MACHINE_PATHS:
            return []
        ip = _client_ip()
        self._note_proxy()
        counters = [_Counter(_MACHINE_PATHS[path], ip, limits.endpoint, f"ip {ip}")]
        if path == "/token":
            client_id = _presented_client_id()
            if client_id is not None:
                subject = f"client_id {client_id} (latest from ip {ip})"
                counters.append(_Counter("token-client", client_id, limits.token_client, subject))
        counters.append(self._failure_counter(ip, amount=0))
        return counters

    def _failure_counter(self, ip: str, amount: int = 1) -> _Counter:
        return _Counter("failures", ip, self.limits.failures, f"ip {ip}", amount)

    def _note_proxy(self) -> None:
        """Say once that a peer outside ``server.trusted_proxies`` sent forwarding headers.

        An operator behind a proxy who forgot ``trusted_proxies`` would otherwise count
        every client as the proxy. Requests from a trusted proxy are already resolved to
        the client address (``broker.web.proxies``) and say nothing.
        """
        if self._proxy_noted or "broker.proxy_addr" in request.environ:
            return
        if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
            self._proxy_noted = True
            log.warning(
                "rate_limits: requests carry X-Forwarded-For/Forwarded from %s, which is not in "
                "server.trusted_proxies; limits count that address for every client behind it",
                request.remote_addr,
            )


def _client_ip() -> str:
    """The address rate limits count: the TCP peer, or behind a proxy listed in
    ``server.trusted_proxies`` the client address it forwarded (``broker.web.proxies``
    rewrites REMOTE_ADDR; X-Forwarded-For from anyone else is ignored, anyone can send
    it). IPv6 clients are counted per /64, because one host usually holds a whole /64
    and could otherwise rotate addresses within it.
    """
    raw = request.remote_addr or ""
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return _printable(raw) or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _presented_client_id() -> str | None:
    """The client_id the request names (Basic auth user, else the form), unverified.

    It is used for counting only: the token endpoint still authenticates the client.
    """
    auth = request.authorization
    if auth is not None and auth.type == "basic" and auth.username:
        return _printable(unquote(auth.username))  # RFC 6749 §2.3.1: form-urlencoded
    form_id = request.form.get("client_id")
    return _printable(form_id) if form_id else None


def _printable(value: str) -> str | None:
    """Printable ASCII only and bounded: safe in a log line and a Redis key."""
    cleaned = "".join(ch if "!" <= ch <= "~" else "?" for ch in value[:_MAX_ID_CHARS])
    return cleaned or None


def _is_failure(response: Response) -> bool:
    if response.status_code == 401:
        return True
    if response.status_code != 400 or not response.is_json:
        return False
    body = response.get_json(silent=True)
    return isinstance(body, dict) and body.get("error") in _FAILURE_ERRORS


def _too_many(retry_after: int) -> Response:
    if request.path in _BROWSER_PATHS:
        response = error_page("rate_limited", 429)
    else:
        response = json_error("temporarily_unavailable", "Too many requests.", 429)
    response.headers["Retry-After"] = str(retry_after)
    return response


def install_rate_limiter(
    app: Flask,
    settings: RateLimitConfig,
    limits: RateLimits | None = None,
    *,
    shared_counters: Path | None = None,
) -> RateLimiter | None:
    """Register the limiter the config asks for; ``enabled: false`` registers nothing.

    ``shared_counters``: the table the workers of ``serve`` share (module docstring);
    without it, this process counts alone. With Redis it only backs an outage.
    """
    if not settings.enabled:
        return None
    local: Counters = (
        SharedCounters(shared_counters) if shared_counters is not None else MemoryCounters()
    )
    counters: Counters = (
        local if settings.storage == "memory" else RedisCounters(settings.storage, fallback=local)
    )
    limiter = RateLimiter(counters, limits)
    limiter.init_app(app)
    return limiter
