"""Logging: secrets kept out (SC-02), JSON lines, one access line per request, one line
per QQ login outcome (fields in docs/observability.md).

The broker never logs tokens itself, but two libraries do at DEBUG: Authlib
prints every issued token, and urllib3 prints request lines whose query holds
QQ's access token (QQ's /me and get_user_info take it only in the URL). The
filters below drop or redact such records wherever logging is configured, and
:class:`JsonFormatter` masks secret query values again in whatever it writes.

What the broker's own lines never carry: tokens, codes, client secrets, the QQ app
key, cookies, query strings (the access line logs the path alone), and OpenIDs
other than as a keyed hash (:class:`LoginLog`) unless ``logging.log_identifiers``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote_plus

from flask import Flask, Response, g, has_request_context, request

#: Query parameters whose values are secrets or personal identifiers.
SECRET_QUERY = re.compile(
    r"((?:access_token|refresh_token|client_secret|code|openid|unionid|oauth_consumer_key)=)"
    r"[^&\s\"']*"
)


class RedactQuery(logging.Filter):
    """Replace secret query values in a record's message with ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = SECRET_QUERY.sub(r"\1***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class DropIssuedTokens(logging.Filter):
    """Authlib logs "Issue token %r to %r" with the whole token response: drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Issue token")


def install_redaction() -> None:
    """Attach the filters once (idempotent: create_app may run several times)."""
    for name, log_filter in (
        ("urllib3.connectionpool", RedactQuery()),
        ("authlib.oauth2.rfc6749.grants.authorization_code", DropIssuedTokens()),
        ("authlib.oauth2.rfc6749.grants.refresh_token", DropIssuedTokens()),
    ):
        logger = logging.getLogger(name)
        if not any(type(f) is type(log_filter) for f in logger.filters):
            logger.addFilter(log_filter)


# --------------------------------------------------------------------------- JSON lines

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Marks the handler ``configure_logging`` installs, so a second call replaces it.
_HANDLER_MARK = "qq_oidc_broker_handler"


def redact(text: str) -> str:
    """Secret query values masked (the same rule as :class:`RedactQuery`)."""
    return SECRET_QUERY.sub(r"\1***", text)


def current_request_id() -> str | None:
    """The request id of the request this thread is serving, if any."""
    if not has_request_context():
        return None
    value = g.get("request_id")
    return value if isinstance(value, str) else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, extra fields.

    Why a formatter and not a different logger: every library's records come out in the
    same shape, so a log pipeline parses one format. The logger filters above still run
    first (they belong to the loggers); this formatter masks secret query values once more
    in the message, the extra fields and the exception text, as a second line of defence.
    The output is ASCII (``\\uXXXX`` escapes), so no console encoding can break a line.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key in _RECORD_ATTRIBUTES or key in entry or key.startswith("_"):
                continue
            entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str)


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Root logging for the command line: ``text`` or ``json`` lines on stderr at ``level``.

    Safe to call twice (``serve`` calls it again once the config is loaded): the handler
    from the first call is replaced. A root logger that already has a handler of someone
    else's (an embedding program, pytest) is left alone, as ``logging.basicConfig`` does.
    The libraries that print secrets at DEBUG stay at INFO whatever ``level`` says.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
        root.setLevel(level)
    for noisy in ("authlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.INFO)
    # Alembic narrates every plugin and context at INFO; migrate.py logs what matters.
    logging.getLogger("alembic").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- identifiers


class LoginLog:
    """One line per finished QQ login, with the user as a keyed hash of the OpenID.

    An OpenID is a stable personal identifier; logs travel further than the database
    (aggregators, tickets), so by default they carry HMAC-SHA256(OpenID) under a key
    derived from the app's secret key: the same user gives the same value on every
    instance (secret_key is shared), which is all correlation needs, yet the value cannot
    be turned back into an OpenID without the key. ``raw_identifiers`` (config
    ``logging.log_identifiers``) logs OpenIDs as they are, and says so at start-up.
    """

    def __init__(
        self, secret_key: str | bytes | None = None, *, raw_identifiers: bool = False
    ) -> None:
        secret = secret_key.encode() if isinstance(secret_key, str) else secret_key
        # Derived, not the secret key itself: this key only ever hashes log identifiers.
        self._key = hmac.new(
            secret or secrets.token_bytes(32), b"qq-oidc-broker log identifiers", hashlib.sha256
        ).digest()
        self.raw_identifiers = raw_identifiers
        if raw_identifiers:
            LOGIN_LOG.warning(
                "logging.log_identifiers is on: QQ OpenIDs are written to the logs unhashed"
            )

    def identifier(self, openid: str) -> str:
        """What the logs show for ``openid``: the keyed hash (128 bits, hex) or the raw id."""
        if self.raw_identifiers:
            return openid
        return hmac.new(self._key, openid.encode(), hashlib.sha256).hexdigest()[:32]

    def completed(self, client_id: str, openid: str) -> None:
        subject = self.identifier(openid)
        _note_client(client_id)
        fields = {
            "event": "login",
            "outcome": "completed",
            "client_id": client_id,
            "subject": subject,
        }
        LOGIN_LOG.info(
            "QQ login completed (client=%s, subject=%s)", client_id, subject, extra=fields
        )

    def failed(self, reason: str, client_id: str | None = None) -> None:
        _note_client(client_id)
        fields = {"event": "login", "outcome": "failed", "reason": reason, "client_id": client_id}
        LOGIN_LOG.info("QQ login failed: %s (client=%s)", reason, client_id or "-", extra=fields)


LOGIN_LOG = logging.getLogger("broker.login")
ACCESS_LOG = logging.getLogger("broker.access")


def _note_client(client_id: str | None) -> None:
    """Remember the client for this request's access line (the callback knows it late)."""
    if client_id and has_request_context():
        g.log_client_id = client_id


# --------------------------------------------------------------------------- requests

#: Longest path an access line shows; the rest is cut (a path is the client's input).
MAX_LOGGED_PATH = 200
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


class ClientLookup(Protocol):
    """Who is registered: a dict of clients, or the provider's client directory."""

    def get(self, client_id: str, /) -> object | None: ...


#: Endpoints that resolve the client themselves: only there is the client id of an access
#: line looked up (the directory has it cached by then; elsewhere a made-up id would cost a
#: database query per request just for a log field).
CLIENT_PATHS = ("/authorize", "/token", "/revoke", "/introspect", "/logout")


def install_request_logging(app: Flask, clients: ClientLookup) -> None:
    """One access line per request, and ``X-Request-ID`` echoed on every response.

    The timer starts before every other hook and the line is written after every other
    one (Flask runs ``after_request`` hooks in reverse), so both see the whole request,
    including answers given early (431, 429). Only registered client ids are logged.
    """

    def start_timer() -> None:
        g.log_started = time.perf_counter()

    def log_request(response: Response) -> Response:
        request_id = current_request_id() or secrets.token_hex(8)
        response.headers["X-Request-ID"] = request_id
        started = g.get("log_started")
        elapsed = time.perf_counter() - started if isinstance(started, float) else 0.0
        path = _UNPRINTABLE.sub("?", request.script_root + request.path)[:MAX_LOGGED_PATH]
        fields: dict[str, Any] = {
            "event": "request",
            "method": _UNPRINTABLE.sub("?", request.method)[:16],
            "path": path,
            "status": response.status_code,
            "duration_ms": round(elapsed * 1000, 1),
            "client_ip": request.remote_addr,
            "request_id": request_id,
        }
        client_id = _request_client_id(clients)
        if client_id:
            fields["client_id"] = client_id
        ACCESS_LOG.info("%s %s %d", fields["method"], path, response.status_code, extra=fields)
        return response

    app.before_request_funcs.setdefault(None, []).insert(0, start_timer)
    app.after_request_funcs.setdefault(None, []).insert(0, log_request)


def _request_client_id(clients: ClientLookup) -> str | None:
    """The registered client this request names (query, parsed form or HTTP Basic).

    The form is read only if the endpoint already parsed it: parsing it here would read
    a body nobody wanted (or raise for one that was refused as too large).
    """
    noted = g.get("log_client_id")
    if isinstance(noted, str):
        return noted  # the login log named it: already a registered client
    if request.path not in CLIENT_PATHS:
        return None
    candidates = [request.args.get("client_id")]
    form = request.__dict__.get("form")
    if form is not None:
        candidates.append(form.get("client_id"))
    auth = request.authorization
    if auth is not None and auth.type == "basic" and auth.username:
        candidates.append(unquote_plus(auth.username))  # RFC 6749 §2.3.1 form-encodes it
    for candidate in candidates:
        if candidate and len(candidate) <= 255 and is_registered(clients, candidate):
            return candidate
    return None


def is_registered(clients: ClientLookup, client_id: str) -> bool:
    """Whether ``client_id`` is a registered client, and False when that cannot be known.

    A stored client may need a database read; a log field or a metric label must never
    turn a response into an error because the database is down.
    """
    try:
        return clients.get(client_id) is not None
    except Exception:  # any failure only means "not shown"
        return False
