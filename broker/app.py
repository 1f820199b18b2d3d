"""``create_app``: the one place where config, keys, storage, connector and web meet."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, g, request

from broker.config import PRODUCTION_QQ_BASE_URL, Config
from broker.connectors.base import Connector
from broker.connectors.registry import connector_from_config
from broker.housekeeping import Housekeeper, Job
from broker.keys import KeyRing
from broker.logs import LoginLog, install_redaction, install_request_logging
from broker.metrics import MeteredConnector, Metrics, install_metrics_endpoint
from broker.oidc.avatars import SECRET_NAME as AVATAR_SECRET_NAME
from broker.oidc.avatars import AvatarHosts, AvatarUrls
from broker.oidc.provider import Provider
from broker.oidc.registry import ClientDirectory
from broker.oidc.server import ProviderContext
from broker.oidc.upstream import UpstreamSessions
from broker.storage import ClientRecord, SQLStore, StorageError, Store
from broker.storage.base import digest
from broker.web.avatar import install_avatar_proxy
from broker.web.errors import register_error_handlers
from broker.web.proxies import trust_forwarded_for
from broker.web.ratelimit import RateLimits, install_rate_limiter
from broker.web.routes import bp
from broker.web.security import add_security_headers

log = logging.getLogger("broker")

#: DO-01: bodies larger than this are refused with 413 before any parsing.
MAX_CONTENT_LENGTH = 64 * 1024


class StartupError(Exception):
    """The broker cannot start: one line for the operator, no traceback."""


def create_app(
    config: Config,
    *,
    connector: Connector | None = None,
    store: Store | None = None,
    rate_limits: RateLimits | None = None,
    shared_counters: Path | None = None,
) -> Flask:
    """Build the broker. ``connector`` and ``store`` are injectable for tests of other upstreams;
    ``rate_limits`` replaces the default limits (tests use small ones). Whether limits apply
    and where they are counted stays ``config.rate_limits``; ``shared_counters`` is the
    rate-limit table the workers of ``serve`` share (broker/web/ratelimit_shared.py)."""
    # keys.storage: files loads keys first, as it always did (a broken key file is reported
    # before the database is touched); database mode needs the schema they live in.
    in_files = config.keys.storage == "files"
    keyring = KeyRing.from_config(config.keys, config.lifetimes) if in_files else None
    store = store or SQLStore(
        config.storage.url,
        pool_size=config.storage.pool_size,
        max_overflow=config.storage.max_overflow,
    )
    _prepare_schema(store, config.storage.auto_upgrade)
    store.sync_clients([_client_record(c) for c in config.clients])
    keyring = keyring or KeyRing.from_config(config.keys, config.lifetimes, store)
    secret_key = config.secret_key or keyring.shared_secret("secret_key").hex()
    salt = (
        config.pairwise_salt.encode()
        if config.pairwise_salt
        else keyring.shared_secret("pairwise_salt")
    )
    # upstream.connector names an entry point (default qq); a bad one is a ConfigError line.
    connector = connector or connector_from_config(config)
    metrics = Metrics(keyring)
    connector = MeteredConnector(connector, metrics)
    token_key = keyring.shared_secret("upstream_token_key")
    avatars = _avatar_urls(config, keyring)
    ctx = ProviderContext(
        config=config,
        store=store,
        keyring=keyring,
        # Config clients, then those added with `clients add` (read through a short cache).
        clients=ClientDirectory(config, store),
        pairwise_salt=salt,
        upstream=UpstreamSessions(config, store, connector, token_key),
        avatars=avatars,
        metrics=metrics,
        login_log=LoginLog(secret_key, raw_identifiers=config.logging.log_identifiers),
    )
    metrics.recognise(ctx.clients)  # client_id labels: registered clients only

    for note in unenforced_settings(config):
        log.warning("%s", note)
    install_redaction()

    app = Flask("broker", static_folder=None)
    app.config.update(
        DEBUG=False,  # never the Werkzeug debugger, whatever FLASK_DEBUG says (SC-03)
        SECRET_KEY=secret_key,
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=not config.is_development,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["qq_oidc_broker"] = Provider(ctx, connector)
    housekeeper = Housekeeper(
        [
            Job("purge", config.storage.purge_interval, store.purge_expired),
            _key_rotation_job(config, keyring),
        ],
    )
    housekeeper.start()
    app.extensions["qq_oidc_broker.housekeeper"] = housekeeper
    app.extensions["qq_oidc_broker.metrics"] = metrics
    app.register_blueprint(bp)
    if avatars is not None:
        install_avatar_proxy(app, avatars)
    install_metrics_endpoint(app, metrics, config.metrics.token)
    register_error_handlers(app)
    app.before_request(_refuse_oversized_headers)
    app.before_request(_assign_request_id)
    # After the request id, so that a 429 page shows it.
    install_rate_limiter(app, config.rate_limits, rate_limits, shared_counters=shared_counters)
    app.after_request(add_security_headers)
    # First in and last out of the hooks: one access line per request, X-Request-ID echoed.
    install_request_logging(app, ctx.clients)
    # The trusted-proxy layer goes outside the issuer mount: the client address belongs to
    # the connection, so it is settled before anything else reads it, and every layer below
    # sees the same REMOTE_ADDR. It cannot weaken the Host check: it reads X-Forwarded-For
    # and writes REMOTE_ADDR only, never Host or the scheme, which stay the issuer's.
    app.wsgi_app = trust_forwarded_for(  # type: ignore[method-assign,assignment]
        _mount_at_issuer(app.wsgi_app, config.issuer),
        config.server.trusted_proxies,
    )
    return app


def _key_rotation_job(config: Config, keyring: KeyRing) -> Job:
    """Scheduled rotation (off with ``keys.rotation.interval: 0``): every instance checks,
    often enough to catch its turn well within ``publish_ahead``; the ring's lock or
    lease makes sure only one creates the next key."""
    interval = min(60, config.keys.refresh_interval) if config.keys.rotation_interval else 0
    return Job("rotate-keys", interval, keyring.rotate_if_due)


def _prepare_schema(store: Store, auto_upgrade: bool) -> None:
    """Migrate on start, or (``storage.auto_upgrade: false``) refuse an out-of-date schema:
    running new code on an old schema would fail request by request instead."""
    if auto_upgrade:
        store.create_schema()
        return
    current, head = store.schema_revision()
    if current != head:
        raise StorageError(
            f"the database schema is at revision {current or 'none (empty database)'}, this "
            f"version needs {head}: run `qq-oidc-broker db upgrade` (or set "
            "storage.auto_upgrade: true)"
        )


def _avatar_urls(config: Config, keyring: KeyRing) -> AvatarUrls | None:
    """``claims.picture: proxy``: the sealer of ``picture`` URLs, keyed by a secret every
    instance shares (a URL one instance hands out opens on all of them)."""
    if config.claims.picture != "proxy":
        return None
    hosts = AvatarHosts.with_extra(config.claims.avatar_hosts)
    return AvatarUrls(config.issuer, keyring.shared_secret(AVATAR_SECRET_NAME), hosts)


def unenforced_settings(config: Config) -> list[str]:
    """Settings the config accepts that this version does not act on yet, said out loud.

    An operator who turns something on must not believe it works when it does not.
    """
    notes = []
    base_url = config.upstream.qq.base_url.lower().rstrip("/")
    if not config.is_development and base_url != PRODUCTION_QQ_BASE_URL:
        notes.append(f"upstream.qq.base_url: a staging twin ({config.upstream.qq.base_url})")
    return notes


def _client_record(client: Any) -> ClientRecord:
    secret = client.client_secret
    metadata = {
        "redirect_uris": list(client.redirect_uris),
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "grant_types": list(client.grant_types),
    }
    return ClientRecord(client.client_id, digest(secret) if secret else None, metadata, "config")


#: DO-01: header bytes a request may carry (browsers send a few kB; the server allows more).
MAX_HEADER_BYTES = 16 * 1024


def _refuse_oversized_headers() -> Response | None:
    size = sum(len(name) + len(value) + 4 for name, value in request.headers.items())
    if size <= MAX_HEADER_BYTES:
        return None
    return Response("Request header fields too large", status=431, mimetype="text/plain")


def _assign_request_id() -> None:
    supplied = request.headers.get("X-Request-ID", "")
    # ASCII only: str.isalnum() also takes letters like "é" and digits like "²".
    ok = 0 < len(supplied) <= 64 and supplied.isascii() and supplied.replace("-", "").isalnum()
    g.request_id = supplied if ok else secrets.token_hex(8)


HEALTH_PATHS = ("/healthz", "/readyz")


def _accepted_hosts(netloc: str) -> frozenset[str]:
    """The issuer's host[:port]; for a loopback issuer, its loopback aliases too."""
    netloc = netloc.lower()
    parts = urlsplit(f"//{netloc}")
    if parts.hostname not in {"127.0.0.1", "localhost", "::1"}:
        return frozenset({netloc})
    port = f":{parts.port}" if parts.port else ""
    return frozenset(f"{alias}{port}" for alias in ("127.0.0.1", "localhost", "[::1]"))


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _mount_at_issuer(wsgi_app: WSGIApp, issuer: str) -> WSGIApp:
    """Serve the app at the issuer's host, scheme and path, whatever the proxy says.

    URLs are always built from the configured issuer, never from Host or
    X-Forwarded-*. A request for another host is refused (checklist UP-13),
    except health checks, which load balancers send to an instance's address;
    the scheme keeps Authlib's transport check (which reads the request URL)
    from refusing requests a TLS proxy forwards over http; the path lets an
    issuer such as ``https://example.com/oidc`` serve its endpoints under
    ``/oidc`` (OIDC Discovery §4: ``{issuer}/.well-known/...``).
    """
    parts = urlsplit(issuer)
    prefix = parts.path.rstrip("/")
    hosts = _accepted_hosts(parts.netloc)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        host = environ.get("HTTP_HOST", "").lower()
        if host not in hosts and not path.endswith(HEALTH_PATHS):
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"Unexpected Host"]
        environ["wsgi.url_scheme"] = parts.scheme
        environ["HTTP_HOST"] = parts.netloc
        if prefix:
            if path != prefix and not path.startswith(prefix + "/"):
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"Not Found"]
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
            environ["PATH_INFO"] = path[len(prefix) :]
        return wsgi_app(environ, start_response)

    return app
