"""Prometheus metrics (``prometheus_client``): what an operator alerts on.

One :class:`Metrics` per app, built by ``create_app`` and kept in ``app.extensions``; nothing
here is a module-level global, so two apps in one process (tests, ``dev``) never share
counters. Names carry the ``qq_oidc_broker_`` prefix (the table is docs/observability.md).
Labels are bounded: client ids only when registered (else ``unknown``), reasons and
endpoints only from the code's own constants, and QQ error codes capped per process.

Processes: ``qq-oidc-broker serve`` is one process with threads (waitress), and the
counters of ``prometheus_client`` are thread-safe, so a scrape of that process sees every
request. A WSGI server that forks workers (gunicorn with ``broker.wsgi:app``) gives each
worker its own counters; for it, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
before start-up: ``prometheus_client`` then writes each value to a file there, and a scrape
of any worker merges them all (``MultiProcessCollector``). The signing-key gauge is
computed at scrape time from the key ring, which every worker shares, so it needs no file.

Exposure: ``metrics.port > 0`` serves ``/metrics`` alone on a separate listener
(:meth:`Metrics.wsgi_app`, started by ``serve``); ``metrics.token`` serves it on the main
port to ``Authorization: Bearer <token>`` (:func:`install_metrics_endpoint`).
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from flask import Flask, Response, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from broker.connectors.base import (
    Connector,
    Identity,
    UpstreamCancelled,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTokens,
    UpstreamUnavailable,
)
from broker.logs import ClientLookup, is_registered

if TYPE_CHECKING:
    from broker.keys import KeyRing

__all__ = [
    "MULTIPROC_ENV",
    "PREFIX",
    "MeteredConnector",
    "Metrics",
    "MetricsSetupError",
    "install_metrics_endpoint",
    "upstream_reason",
]

log = logging.getLogger("broker.metrics")

PREFIX: Final = "qq_oidc_broker_"
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Label value for a client id that is not registered (never the client's own string).
UNKNOWN: Final = "unknown"
#: Distinct QQ error codes one process labels; further ones count as ``other``. QQ's table
#: is a few dozen codes; a hostile or broken upstream must not grow the series without end.
MAX_QQ_CODES: Final = 64
#: QQ answers within ~100 ms normally; the connector gives up after ~8 s (connect + read).
LATENCY_BUCKETS: Final = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Key states of broker.keys.schedule, each always exported (0 when absent) so that an
#: alert on ``state="active"`` sees a 0 rather than a missing series.
KEY_STATES: Final = ("active", "next", "previous", "expired", "withdrawn")
GRANT_TYPES: Final = frozenset({"authorization_code", "refresh_token"})
_LABEL_WORD = re.compile(r"[a-z][a-z0-9_.]{0,47}")

T = TypeVar("T")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class MetricsSetupError(ValueError):
    """Metrics cannot start (a bad ``PROMETHEUS_MULTIPROC_DIR``): one line for the operator."""


def _word(value: str | None) -> str:
    """A label value from the code's own constants; anything unexpected becomes ``other``."""
    return value if value and _LABEL_WORD.fullmatch(value) else "other"


def upstream_reason(err: UpstreamError) -> str:
    """The login-failure reason for a connector error: ``upstream_`` + its message key."""
    return "upstream_" + _word(err.message_key.removeprefix("upstream."))


def _outcome(err: UpstreamError) -> str:
    """The ``outcome`` label of a failed QQ call: the kind of error, not its text."""
    for kind, name in (
        (UpstreamCancelled, "cancelled"),
        (UpstreamUnavailable, "unavailable"),
        (UpstreamRejected, "rejected"),
        (UpstreamProtocolError, "protocol"),
    ):
        if isinstance(err, kind):
            return name
    return "error"


def multiprocess_dir() -> str | None:
    """The multi-process directory, checked now rather than at the first increment."""
    path = os.environ.get(MULTIPROC_ENV) or None
    if path is not None and not os.path.isdir(path):
        raise MetricsSetupError(f"{MULTIPROC_ENV}={path!r} is not a directory")
    return path


class Metrics:
    """The broker's metrics and their registry; every method is cheap and thread-safe."""

    def __init__(self, keyring: KeyRing | None = None, clients: ClientLookup | None = None) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir()
        self._clients = clients
        self._codes: set[str] = set()
        self._codes_lock = threading.Lock()
        self._build_metrics()
        if self.multiprocess_dir is None:
            # Per-process facts; in multi-process mode they would describe one worker only.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._scrape_registry = self._scrape_target(keyring)

    def _build_metrics(self) -> None:
        def counter(name: str, text: str, labels: tuple[str, ...]) -> Counter:
            return Counter(PREFIX + name, text, labels, registry=self.registry)

        self.logins_started = counter(
            "logins_started", "QQ logins started (browser sent to QQ).", ("client_id",)
        )
        self.logins_completed = counter(
            "logins_completed", "QQ logins that ended with a code for the client.", ("client_id",)
        )
        self.logins_failed = counter(
            "logins_failed", "QQ logins that ended in an error, by reason.", ("client_id", "reason")
        )
        self.qq_calls = counter(
            "qq_calls", "Connector calls to QQ, by call and outcome.", ("call", "outcome")
        )
        self.qq_errors = counter(
            "qq_errors", "Numeric error codes QQ answered, by QQ endpoint.", ("endpoint", "code")
        )
        self.tokens_issued = counter(
            "tokens_issued", "Token responses issued, by grant type.", ("grant_type", "client_id")
        )
        self.refresh_reuse = counter(
            "refresh_token_reuse",
            "Refresh token reuse detections (the token family was revoked).",
            ("client_id",),
        )
        self.qq_latency = Histogram(
            PREFIX + "qq_call_duration_seconds",
            "Duration of connector calls to QQ (a login's exchange is token + me + user info).",
            ("call",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def _scrape_target(self, keyring: KeyRing | None) -> CollectorRegistry:
        """What a scrape reads: this registry, or every process's files merged."""
        target = self.registry
        if self.multiprocess_dir is not None:
            target = CollectorRegistry()
            MultiProcessCollector(target, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        if keyring is not None:
            target.register(SigningKeyCollector(keyring))
        return target

    # -- what the broker reports ------------------------------------------------------

    def recognise(self, clients: ClientLookup) -> None:
        """Set who is registered (the client directory exists only after the metrics)."""
        self._clients = clients

    def client(self, client_id: str | None) -> str:
        """A client id as a label: only registered ids, so a caller cannot add series.

        Every caller passes an id the provider has just resolved, so the lookup is served
        from the directory's cache; the check is the guarantee, not a filter in practice.
        """
        if client_id and self._clients is not None and is_registered(self._clients, client_id):
            return client_id
        return UNKNOWN

    def login_started(self, client_id: str) -> None:
        self.logins_started.labels(self.client(client_id)).inc()

    def login_completed(self, client_id: str) -> None:
        self.logins_completed.labels(self.client(client_id)).inc()

    def login_failed(self, reason: str, client_id: str | None = None) -> None:
        self.logins_failed.labels(self.client(client_id), _word(reason)).inc()

    def token_issued(self, grant_type: str | None, client_id: str) -> None:
        grant = grant_type if grant_type in GRANT_TYPES else "other"
        self.tokens_issued.labels(grant, self.client(client_id)).inc()

    def refresh_reused(self, client_id: str) -> None:
        self.refresh_reuse.labels(self.client(client_id)).inc()

    def qq_call(self, call: str, outcome: str, seconds: float) -> None:
        self.qq_calls.labels(call, outcome).inc()
        self.qq_latency.labels(call).observe(seconds)

    def qq_error(self, endpoint: str | None, code: int) -> None:
        self.qq_errors.labels(_word(endpoint), self._code_label(code)).inc()

    def _code_label(self, code: int) -> str:
        label = str(code)
        with self._codes_lock:
            if label in self._codes:
                return label
            if len(self._codes) < MAX_QQ_CODES:
                self._codes.add(label)
                return label
        return "other"

    # -- exposition ---------------------------------------------------------------------

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type (OpenMetrics when the scraper asks)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self._scrape_registry), content_type

    def wsgi_app(self) -> WSGIApp:
        """``GET /metrics`` and nothing else, for the separate listener (no token there:
        its address, ``metrics.host``, is what keeps it private)."""

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/metrics":
                return _plain(start_response, "404 Not Found", b"Not Found")
            if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                return _plain(start_response, "405 Method Not Allowed", b"Method Not Allowed")
            body, content_type = self.exposition(environ.get("HTTP_ACCEPT", ""))
            headers = [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ]
            start_response("200 OK", headers)
            return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [body]

        return app


def _plain(start_response: Callable[..., Any], status: str, body: bytes) -> list[bytes]:
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]


class SigningKeyCollector:
    """Signing keys by algorithm and state, read from the key ring at scrape time.

    A gauge kept up to date by rotation would go stale when another instance rotates; the
    ring's schedule is the truth every instance and worker shares.
    """

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            PREFIX + "signing_keys",
            "Signing keys by algorithm and state (active: the key signing now).",
            labels=("alg", "state"),
        )
        published = GaugeMetricFamily(
            PREFIX + "signing_keys_published",
            "Keys published in /jwks.json, by algorithm.",
            labels=("alg",),
        )
        statuses = self.keyring.statuses(int(time.time()))
        by_state = Tally((s.key.alg, s.state) for s in statuses)
        shown = Tally(s.key.alg for s in statuses if s.published)
        for alg in self.keyring.algorithms:
            for state in KEY_STATES:
                states.add_metric((alg, state), by_state.get((alg, state), 0))
            published.add_metric((alg,), shown.get(alg, 0))
        yield states
        yield published


class MeteredConnector:
    """The same :class:`Connector`, counting and timing each call that goes to QQ.

    It wraps rather than edits the QQ connector so that wire code stays free of metrics.
    ``authorization_url`` and ``parse_callback`` make no HTTP call and pass straight
    through; every other attribute (``close``, ``app_id``) is the wrapped connector's.
    """

    def __init__(self, inner: Connector, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"MeteredConnector({self.inner!r})"

    def authorization_url(
        self, *, redirect_uri: str, state: str, display: str | None = None
    ) -> str:
        return self.inner.authorization_url(redirect_uri=redirect_uri, state=state, display=display)

    def parse_callback(self, args: Mapping[str, str]) -> str:
        return self.inner.parse_callback(args)

    def exchange(self, *, code: str, redirect_uri: str, want_unionid: bool = False) -> Identity:
        return self._timed(
            "exchange",
            lambda: self.inner.exchange(
                code=code, redirect_uri=redirect_uri, want_unionid=want_unionid
            ),
        )

    def refresh(self, refresh_token: str) -> UpstreamTokens:
        return self._timed("refresh", lambda: self.inner.refresh(refresh_token))

    def check_token(self, access_token: str, want_unionid: bool = False) -> tuple[str, str | None]:
        return self._timed(
            "check_token", lambda: self.inner.check_token(access_token, want_unionid)
        )

    def user_info(self, access_token: str, openid: str) -> tuple[str, str | None, dict[str, Any]]:
        return self._timed("user_info", lambda: self.inner.user_info(access_token, openid))

    def _timed(self, call: str, run: Callable[[], T]) -> T:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return run()
        except UpstreamError as err:
            outcome = _outcome(err)
            if err.upstream_code is not None:
                self.metrics.qq_error(err.endpoint, err.upstream_code)
            raise
        except Exception:
            outcome = "exception"  # a bug, not QQ: still counted, never swallowed
            raise
        finally:
            self.metrics.qq_call(call, outcome, time.perf_counter() - started)


def install_metrics_endpoint(app: Flask, metrics: Metrics, token: str | None) -> None:
    """``GET /metrics`` on the main port for ``Authorization: Bearer <token>``.

    Without a token there is no route, so ``/metrics`` is the app's ordinary 404: the
    main port is public, and what the counters reveal (traffic, clients, QQ trouble) is
    the operator's business.
    """
    if token is None:
        return
    expected = token.encode("utf-8")

    def metrics_view() -> Response:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return _denied('Bearer realm="metrics"')
        # Constant time: the comparison must not tell how much of a guess was right.
        if not hmac.compare_digest(presented.strip().encode("utf-8"), expected):
            return _denied('Bearer realm="metrics", error="invalid_token"')
        body, content_type = metrics.exposition(request.headers.get("Accept", ""))
        response = Response(body, status=200, content_type=content_type)
        response.headers["Cache-Control"] = "no-store"
        return response

    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


def _denied(challenge: str) -> Response:
    response = Response("Unauthorized\n", status=401, mimetype="text/plain")
    response.headers["WWW-Authenticate"] = challenge
    response.headers["Cache-Control"] = "no-store"
    return response
