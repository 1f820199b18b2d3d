"""The connector contract kit: the checks any upstream connector must pass, run against its
emulator over real HTTP.

Why it exists: the broker drives a connector only through :class:`~broker.connectors.base.
Connector`, but it relies on more than those signatures. It ends a login or a refresh-token
family on ``message_key`` (``upstream.token_expired`` ends a family, ``upstream.cancelled``
is the user's own doing), it keys accounts on ``Identity.openid`` and so needs it stable,
it shows ``oauth_error`` to relying parties, and it writes ``str(error)`` to its logs. A
connector in its own package proves it keeps these promises by running this kit in its
test suite; the built-in QQ connector runs it too (tests/connectors/test_contract.py).

What the kit does not check, because the interface has no say in it: the callback's
``state``. The broker compares it with the pending login before it calls
``parse_callback`` (oidc/provider.py), so the kit only checks that the upstream hands the
state back unchanged, on the redirect URI it was given.

The connector author provides a :class:`ContractAdapter`: how to start the emulator for a
callback URL (and the factory options pointing at it), and how to play the browser to
log a user in there. The connector itself is loaded through its entry point, as the
broker loads it. Nothing here imports pytest::

    run_contract(MyAdapter()).assert_ok()       # raises ContractFailure listing failures

or, one pytest test per check::

    @pytest.fixture(scope="module")
    def contract():
        with ContractSession(MyAdapter()) as session:
            yield session

    @pytest.mark.parametrize("check", CHECKS, ids=str)
    def test_contract(contract, check):
        check.run(contract)

A check that does not apply (no refresh tokens, no UnionID) passes with a note rather
than skipping, so a CI run that refuses skipped tests still runs the kit.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from broker.connectors.base import (
    MESSAGE_KEYS,
    OAUTH_ERRORS,
    Connector,
    Identity,
    UpstreamCancelled,
    UpstreamError,
    UpstreamTokens,
    UpstreamUnavailable,
)
from broker.connectors.registry import (
    CALLBACK_PATH,
    CONNECTOR_MEMBERS,
    ConnectorContext,
    ConnectorFactory,
    ConnectorLoadError,
    load_factory,
)

__all__ = [
    "CHECKS",
    "DEFAULT_ISSUER",
    "LOGIN_TIME_ERRORS",
    "CheckResult",
    "ContractAdapter",
    "ContractCheck",
    "ContractFailure",
    "ContractReport",
    "ContractSession",
    "UpstreamUnderTest",
    "follow_to_callback",
    "run_contract",
    "unused_local_url",
]

#: The issuer the kit pretends to be. Nothing listens there: the kit never fetches the
#: callback, it reads the upstream's redirect to it.
DEFAULT_ISSUER: Final = "http://127.0.0.1:9"
#: ``oauth_error`` values a login-time failure may carry: the authorization endpoint's
#: codes (RFC 6749 section 4.1.2.1); ``invalid_grant`` is for refresh-time calls only.
LOGIN_TIME_ERRORS: Final = frozenset({"access_denied", "temporarily_unavailable", "server_error"})
_REDIRECTS: Final = (301, 302, 303, 307, 308)
#: Shorter values are not searched for in error texts (they would match by accident).
_MIN_SECRET_CHARS: Final = 6
#: A dead upstream must fail fast; the connector's own timeouts decide, this is the margin.
_UNREACHABLE_SECONDS: Final = 30.0


class ContractFailure(AssertionError):
    """A connector broke the contract; the message says which promise and how.

    An AssertionError, so pytest reports it as a failed assertion.
    """


@dataclass(frozen=True)
class UpstreamUnderTest:
    """A running emulator as the kit needs it.

    ``options`` are the connector factory's options pointing at the emulator; ``secrets``
    are values that must never show up in an error, a log line, a URL or ``repr()``
    (the client secret / app key). Codes and tokens are added by the kit as it sees them.
    """

    options: Mapping[str, Any]
    secrets: Sequence[str] = ()


class ContractAdapter(ABC):
    """What a connector's author writes to run the kit: the emulator and a browser."""

    #: The entry point name (``[project.entry-points."qq_oidc_broker.connectors"]``); the
    #: connector's ``name`` must be the same.
    name: str
    #: Users the emulator can log in; the first is the default. With two or more, the kit
    #: also checks that different users get different subjects.
    users: Sequence[str] = ()
    #: Whether a refresh token is spent by one refresh (rotated), as QQ's are.
    single_use_refresh_tokens: bool = True
    #: Whether ``exchange(want_unionid=True)`` yields a UnionID (QQ with UnionID enabled).
    supports_unionid: bool = False

    @abstractmethod
    def start(self, callback_url: str) -> UpstreamUnderTest:
        """Start the emulator with ``callback_url`` registered as the app's redirect URI."""

    def stop(self) -> None:
        """Stop the emulator (called once, also after a failed start)."""
        return None

    @abstractmethod
    def login(self, authorization_url: str, user: str, callback_url: str) -> str:
        """Play the browser: log ``user`` in at ``authorization_url`` and return the URL the
        upstream then redirects to (on ``callback_url``), without fetching it.
        :func:`follow_to_callback` does the redirect following."""

    def cancel(self, authorization_url: str, callback_url: str) -> str | None:
        """The callback URL of a login the user cancelled, or None when the upstream never
        redirects a cancel (real PC QQ just closes the window)."""
        return None

    def unreachable_options(self, options: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """``options`` pointing at an address where nothing answers (see
        :func:`unused_local_url`), or None to leave out the outage check."""
        return None

    def connector_factory(self) -> ConnectorFactory | None:
        """The factory to test; None (the default) loads it through the entry point."""
        return None

    def logger_names(self, connector: Connector) -> Sequence[str]:
        """Loggers whose records must never carry a secret: the connector's module."""
        return (type(connector).__module__,)


# --------------------------------------------------------------------------- helpers


def follow_to_callback(
    http: requests.Session,
    url: str,
    callback_url: str,
    *,
    max_hops: int = 10,
    timeout: float = 10.0,
) -> str:
    """GET ``url`` and follow redirects by hand until one points at ``callback_url``.

    Returns that redirect's absolute URL; the callback itself is never fetched. A page
    instead of a redirect (an error page, a login form) is a ContractFailure.
    """
    response = http.get(url, allow_redirects=False, timeout=timeout)
    for _ in range(max_hops):
        location = response.headers.get("Location")
        if response.status_code not in _REDIRECTS or not location:
            raise ContractFailure(
                f"the upstream answered HTTP {response.status_code} at {_endpoint(response.url)} "
                f"instead of redirecting to the callback {callback_url}"
            )
        location = urljoin(response.url, location)
        if _same_endpoint(location, callback_url):
            return location
        response = http.get(location, allow_redirects=False, timeout=timeout)
    raise ContractFailure(f"no redirect to {callback_url} within {max_hops} hops")


def unused_local_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _same_endpoint(url: str, other: str) -> bool:
    a, b = urlsplit(url), urlsplit(other)
    return (a.scheme.lower(), a.netloc.lower(), a.path) == (
        b.scheme.lower(),
        b.netloc.lower(),
        b.path,
    )


def _callback_args(url: str) -> dict[str, str]:
    """The callback query as the web layer hands it to ``parse_callback`` (one value each)."""
    parsed = parse_qs(urlsplit(url).query, keep_blank_values=True)
    repeated = sorted(key for key, values in parsed.items() if len(values) > 1)
    if repeated:
        raise ContractFailure(f"the upstream repeated {', '.join(repeated)} on the callback")
    return {key: values[0] for key, values in parsed.items()}


def _require(condition: bool, message: str) -> None:
    # Not `assert`: the kit must still check under `python -O`.
    if not condition:
        raise ContractFailure(message)


def _exception_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in chain):
            continue
        chain.append(current)
        pending += [current.__cause__, current.__context__]
    return chain


class _LogCapture(logging.Handler):
    """Every record of the watched loggers, at DEBUG, while the session runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self._watched: list[tuple[logging.Logger, int]] = []
        self._formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.texts.append(self._formatter.format(record))
        except Exception:  # a broken log call is the connector's bug, not the kit's crash
            self.texts.append(f"{record.name}: {record.msg!r} {record.args!r}")

    def watch(self, names: Iterable[str]) -> None:
        for name in dict.fromkeys(names):
            logger = logging.getLogger(name)
            self._watched.append((logger, logger.level))
            logger.setLevel(logging.DEBUG)
            logger.addHandler(self)

    def release(self) -> None:
        for logger, level in self._watched:
            logger.removeHandler(self)
            logger.setLevel(level)
        self._watched.clear()


# --------------------------------------------------------------------------- session


class ContractSession:
    """One emulator and one connector, shared by the checks; a context manager."""

    def __init__(self, adapter: ContractAdapter, *, issuer: str = DEFAULT_ISSUER) -> None:
        self.adapter = adapter
        self.context = ConnectorContext(
            issuer=issuer, callback_url=issuer + CALLBACK_PATH, development=True
        )
        self.callback_url = self.context.callback_url
        #: Values that must never leak: the adapter's secrets plus every code and token seen.
        self.sensitive: set[str] = set()
        #: Every UpstreamError a check provoked, with what provoked it.
        self.errors: list[tuple[str, UpstreamError]] = []
        self._upstream: UpstreamUnderTest | None = None
        self._connector: Connector | None = None
        self._built: list[Connector] = []
        self._logs = _LogCapture()
        self._started = False

    def __enter__(self) -> ContractSession:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- life cycle

    def start(self) -> None:
        """Start the emulator and build the connector through its factory."""
        name = getattr(self.adapter, "name", None)
        if not isinstance(name, str) or not name:
            raise ContractFailure("the adapter must set `name` to the connector's entry point")
        if not self.adapter.users:
            raise ContractFailure("the adapter must list at least one emulator user in `users`")
        self._started = True
        try:
            self._upstream = self.adapter.start(self.callback_url)
            self.sensitive.update(self._upstream.secrets)
            self._connector = self.build(self._upstream.options)
            self._logs.watch(self.adapter.logger_names(self._connector))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close every connector built and stop the emulator (safe to call twice)."""
        self._logs.release()
        for connector in self._built:
            close = getattr(connector, "close", None)
            if callable(close):
                close()
        self._built.clear()
        if self._started:
            self._started = False
            self.adapter.stop()

    def factory(self) -> ConnectorFactory:
        """The adapter's factory, else the one the entry point names (as the broker does)."""
        factory = self.adapter.connector_factory()
        if factory is not None:
            return factory
        try:
            return load_factory(self.adapter.name, source="<contract>")
        except ConnectorLoadError as err:
            raise ContractFailure(str(err)) from None

    def build(self, options: Mapping[str, Any]) -> Connector:
        """A connector from ``options``, closed with the session."""
        connector = self.factory()(options, self.context)
        missing = [member for member in CONNECTOR_MEMBERS if not hasattr(connector, member)]
        _require(
            not missing and isinstance(connector, Connector),
            f"the factory returned a {type(connector).__name__}, not a Connector "
            f"(missing: {', '.join(missing) or '?'})",
        )
        self._built.append(connector)
        return connector

    @property
    def connector(self) -> Connector:
        if self._connector is None:
            raise ContractFailure("the session is not started (use it as a context manager)")
        return self._connector

    @property
    def upstream(self) -> UpstreamUnderTest:
        if self._upstream is None:
            raise ContractFailure("the session is not started (use it as a context manager)")
        return self._upstream

    @property
    def log_texts(self) -> list[str]:
        """What the connector logged so far (formatted records)."""
        return list(self._logs.texts)

    # -- steps the checks are made of

    def new_state(self) -> str:
        return secrets.token_urlsafe(24)

    def authorization_url(self, state: str, display: str | None = None) -> str:
        return self.connector.authorization_url(
            redirect_uri=self.callback_url, state=state, display=display
        )

    def login(self, user: str | None = None, *, state: str | None = None) -> tuple[str, str]:
        """Log ``user`` in upstream; returns ``(state, callback URL)``, checked to be ours."""
        state = state or self.new_state()
        url = self.authorization_url(state)
        callback = self.adapter.login(url, user or self.adapter.users[0], self.callback_url)
        _require(
            _same_endpoint(callback, self.callback_url),
            f"the upstream redirected to {_endpoint(callback)}, not to the redirect URI "
            f"{self.callback_url} that authorization_url was given",
        )
        code = _callback_args(callback).get("code")
        if code:
            self.sensitive.add(code)
        return state, callback

    def code(self, user: str | None = None) -> str:
        """A fresh upstream code for ``user``, through ``parse_callback``."""
        _, callback = self.login(user)
        code = self.connector.parse_callback(_callback_args(callback))
        _require(isinstance(code, str) and bool(code), "parse_callback returned no code")
        self.sensitive.add(code)
        return code

    def identity(self, user: str | None = None, *, want_unionid: bool = False) -> Identity:
        """A full login: code, then ``exchange``; the identity's shape is checked."""
        identity = self.connector.exchange(
            code=self.code(user), redirect_uri=self.callback_url, want_unionid=want_unionid
        )
        self.remember_tokens(_check_identity(identity))
        return identity

    def remember_tokens(self, tokens: UpstreamTokens) -> None:
        self.sensitive.add(tokens.access_token)
        if tokens.refresh_token:
            self.sensitive.add(tokens.refresh_token)

    def expect_error(
        self,
        what: str,
        call: Callable[[], object],
        *,
        kind: type[UpstreamError] = UpstreamError,
        oauth_errors: Iterable[str] | None = None,
        message_key: str | None = None,
        sensitive: Iterable[str] = (),
    ) -> UpstreamError:
        """``call`` must raise a well-formed, leak-free ``kind``; returns it."""
        self.sensitive.update(sensitive)
        try:
            result = call()
        except UpstreamError as err:
            error = err
        except Exception as exc:
            raise ContractFailure(
                f"{what}: raised {type(exc).__name__} instead of an UpstreamError "
                "(the broker handles only UpstreamError; anything else is an HTTP 500)"
            ) from exc
        else:
            raise ContractFailure(
                f"{what}: returned a {type(result).__name__} instead of raising {kind.__name__}"
            )
        _require(
            isinstance(error, kind),
            f"{what}: raised {type(error).__name__} ({error.message_key}), "
            f"expected {kind.__name__}",
        )
        allowed = frozenset(oauth_errors) if oauth_errors is not None else None
        _require(
            allowed is None or error.oauth_error in allowed,
            f"{what}: oauth_error {error.oauth_error!r}, expected one of {sorted(allowed or ())}",
        )
        _require(
            message_key is None or error.message_key == message_key,
            f"{what}: message_key {error.message_key!r}, expected {message_key!r}",
        )
        self.check_error(what, error)
        self.errors.append((what, error))
        return error

    def check_error(self, what: str, error: UpstreamError) -> None:
        """The fields pages and logs rely on, and no secret anywhere in the exception chain."""
        _require(
            error.oauth_error in OAUTH_ERRORS,
            f"{what}: oauth_error {error.oauth_error!r} is not one of {sorted(OAUTH_ERRORS)}",
        )
        _require(
            error.message_key in MESSAGE_KEYS,
            f"{what}: message_key {error.message_key!r} is not one of base.MESSAGE_KEYS",
        )
        _require(
            isinstance(error.hint, str) and bool(error.hint.strip()),
            f"{what}: the error has no operator hint",
        )
        _require(str(error).isascii(), f"{what}: str(error) must be ASCII (it goes to logs)")
        for link in _exception_chain(error):
            texts = [str(link), repr(link), *(repr(arg) for arg in link.args)]
            if isinstance(link, UpstreamError):
                texts += [link.hint, link.upstream_message or "", link.endpoint or ""]
            self.require_no_secret(texts, f"{what}: {type(link).__name__}")

    def mask(self, text: str) -> str:
        """``text`` with every sensitive value replaced, for reports a CI log keeps."""
        for value in sorted(self.sensitive, key=len, reverse=True):
            if len(value) >= _MIN_SECRET_CHARS:
                text = text.replace(value, "***")
        return text

    def require_no_secret(self, texts: Iterable[str], where: str) -> None:
        """None of ``texts`` contains a value of :attr:`sensitive`; names only the kind."""
        for text in texts:
            for value in self.sensitive:
                if len(value) >= _MIN_SECRET_CHARS and value in text:
                    kind = "a secret" if value in self.upstream.secrets else "a code or token"
                    raise ContractFailure(f"{where} contains {kind}")


def _check_identity(identity: object) -> UpstreamTokens:
    """The Identity shape the broker stores (user id, profile JSON, sealed tokens)."""
    if not isinstance(identity, Identity):
        raise ContractFailure(f"exchange returned a {type(identity).__name__}, not an Identity")
    openid = identity.openid
    _require(
        isinstance(openid, str) and 0 < len(openid) <= 255 and openid.isprintable(),
        "Identity.openid must be a non-empty printable string of at most 255 characters "
        "(it is the user id and, by default, the OIDC sub)",
    )
    _require(not any(ch.isspace() for ch in openid), "Identity.openid must not contain spaces")
    _require(
        identity.unionid is None or (isinstance(identity.unionid, str) and bool(identity.unionid)),
        "Identity.unionid must be None or a non-empty string",
    )
    _require(isinstance(identity.nickname, str), "Identity.nickname must be a string ('' if none)")
    _require(
        identity.picture is None or isinstance(identity.picture, str),
        "Identity.picture must be None or a URL string",
    )
    _require(isinstance(identity.profile, Mapping), "Identity.profile must be a mapping")
    _require_json(identity.profile, "Identity.profile")
    return _check_tokens(identity.tokens, "Identity.tokens")


def _check_tokens(tokens: object, what: str) -> UpstreamTokens:
    if not isinstance(tokens, UpstreamTokens):
        raise ContractFailure(f"{what} must be an UpstreamTokens")
    _require(
        isinstance(tokens.access_token, str) and bool(tokens.access_token),
        f"{what}.access_token must be a non-empty string",
    )
    _require(
        tokens.refresh_token is None
        or (isinstance(tokens.refresh_token, str) and bool(tokens.refresh_token)),
        f"{what}.refresh_token must be None or a non-empty string",
    )
    _require(
        isinstance(tokens.expires_in, int)
        and not isinstance(tokens.expires_in, bool)
        and tokens.expires_in > 0,
        f"{what}.expires_in must be a positive int (seconds)",
    )
    _require(
        isinstance(tokens.obtained_at, int) and abs(tokens.obtained_at - time.time()) < 300,
        f"{what}.obtained_at must be the unix time the tokens were obtained",
    )
    return tokens


def _require_json(value: object, what: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise ContractFailure(
            f"{what} must be JSON-serialisable (the store keeps it as JSON)"
        ) from None


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class ContractCheck:
    """One promise of the contract; ``run`` raises ContractFailure when it is broken."""

    name: str
    description: str
    function: Callable[[ContractSession], str | None] = field(repr=False)

    def run(self, session: ContractSession) -> str | None:
        """Run against a started session; returns a note (e.g. "not applicable: ...")."""
        return self.function(session)

    def __str__(self) -> str:
        return self.name


_CHECKS: list[ContractCheck] = []


def _check(
    name: str, description: str
) -> Callable[[Callable[[ContractSession], str | None]], Callable[[ContractSession], str | None]]:
    def register(
        function: Callable[[ContractSession], str | None],
    ) -> Callable[[ContractSession], str | None]:
        _CHECKS.append(ContractCheck(name, description, function))
        return function

    return register


@_check("entry_point", "the connector is found by name in the qq_oidc_broker.connectors group")
def _entry_point(session: ContractSession) -> str | None:
    try:
        factory = load_factory(session.adapter.name, source="<contract>")
    except ConnectorLoadError as err:
        raise ContractFailure(str(err)) from None
    own = session.adapter.connector_factory()
    _require(
        own is None or own is factory,
        f"the entry point {session.adapter.name!r} resolves to {factory!r}, "
        f"not to the factory under test {own!r}",
    )
    return None


@_check("interface", "the factory builds a Connector named like its entry point")
def _interface(session: ContractSession) -> str | None:
    connector = session.connector
    _require(isinstance(connector, Connector), "the connector does not satisfy base.Connector")
    _require(
        connector.name == session.adapter.name,
        f"connector.name is {connector.name!r}, the entry point is {session.adapter.name!r}",
    )
    session.require_no_secret([repr(connector), str(connector)], "repr(connector)")
    return None


@_check("authorization_url", "the authorize URL carries the state and the redirect URI")
def _authorization_url(session: ContractSession) -> str | None:
    state = session.new_state()
    url = session.authorization_url(state)
    parts = urlsplit(url)
    _require(
        parts.scheme in ("http", "https") and bool(parts.netloc),
        "authorization_url must return an absolute http(s) URL",
    )
    query = parse_qs(parts.query, keep_blank_values=True)
    _require(query.get("state") == [state], "the authorize URL must carry state once, unchanged")
    _require(
        query.get("redirect_uri") == [session.callback_url],
        "the authorize URL must carry redirect_uri once: the one it was given",
    )
    session.require_no_secret([url], "the authorize URL")
    mobile = session.authorization_url(session.new_state(), display="mobile")
    _require(isinstance(mobile, str), "display='mobile' (phones) must be accepted")
    try:
        session.connector.authorization_url(redirect_uri=session.callback_url, state="")
    except ValueError:
        return None
    raise ContractFailure("an empty state must be refused with ValueError (login CSRF)")


@_check("callback", "the upstream returns the state on the redirect URI; parse_callback the code")
def _callback(session: ContractSession) -> str | None:
    state, callback = session.login()
    args = _callback_args(callback)
    _require(
        args.get("state") == state,
        "the upstream must hand the state back unchanged (the broker matches it to the login)",
    )
    code = session.connector.parse_callback(args)
    _require(isinstance(code, str) and bool(code), "parse_callback must return the code")
    session.sensitive.add(code)
    _require(code != state, "parse_callback returned the state, not the code")
    return None


@_check("callback_without_code", "a callback without a code is a cancel (UpstreamCancelled)")
def _callback_without_code(session: ContractSession) -> str | None:
    cases = {"state only": {"state": session.new_state()}, "empty": {}}
    for label, args in cases.items():
        session.expect_error(
            f"parse_callback({label})",
            partial(session.connector.parse_callback, args),
            kind=UpstreamCancelled,
            oauth_errors={"access_denied"},
            message_key="upstream.cancelled",
        )
    return None


@_check("callback_error", "an error callback is a typed error; a cancelled login a cancel")
def _callback_error(session: ContractSession) -> str | None:
    state = session.new_state()
    denied = {"error": "access_denied", "error_description": "denied", "state": state}
    session.expect_error(
        "parse_callback(error=access_denied)",
        lambda: session.connector.parse_callback(denied),
        kind=UpstreamCancelled,
        oauth_errors={"access_denied"},
        message_key="upstream.cancelled",
    )
    failed = {"error": "server_error", "state": state}
    session.expect_error(
        "parse_callback(error=server_error)",
        lambda: session.connector.parse_callback(failed),
        oauth_errors=LOGIN_TIME_ERRORS,
    )
    callback = session.adapter.cancel(session.authorization_url(state), session.callback_url)
    if callback is None:
        return "the upstream never redirects a cancelled login; only synthetic callbacks checked"
    _require(
        _same_endpoint(callback, session.callback_url),
        "a cancelled login must come back to the redirect URI",
    )
    session.expect_error(
        "parse_callback(the upstream's cancel)",
        lambda: session.connector.parse_callback(_callback_args(callback)),
        kind=UpstreamCancelled,
        oauth_errors={"access_denied"},
        message_key="upstream.cancelled",
    )
    return None


@_check("exchange", "a good code becomes an Identity (subject, profile, tokens)")
def _exchange(session: ContractSession) -> str | None:
    session.identity()
    return None


@_check("stable_subject", "the same user gets the same openid; other users other ones")
def _stable_subject(session: ContractSession) -> str | None:
    users = session.adapter.users
    first, again = session.identity(users[0]), session.identity(users[0])
    _require(
        first.openid == again.openid,
        "two logins of one user gave two openids (accounts would split)",
    )
    if len(users) < 2:
        return "one emulator user only: distinct subjects not checked"
    other = session.identity(users[1])
    _require(other.openid != first.openid, "two users got the same openid (accounts would merge)")
    return None


@_check("bad_code", "an unknown code is refused with upstream.code_invalid")
def _bad_code(session: ContractSession) -> str | None:
    code = secrets.token_hex(16)
    session.expect_error(
        "exchange(an unknown code)",
        lambda: session.connector.exchange(code=code, redirect_uri=session.callback_url),
        oauth_errors=LOGIN_TIME_ERRORS,
        message_key="upstream.code_invalid",
        sensitive=[code],
    )
    return None


@_check("code_single_use", "a code works once; the second use is upstream.code_invalid")
def _code_single_use(session: ContractSession) -> str | None:
    code = session.code()
    identity = session.connector.exchange(code=code, redirect_uri=session.callback_url)
    session.remember_tokens(_check_identity(identity))
    session.expect_error(
        "exchange(a spent code)",
        lambda: session.connector.exchange(code=code, redirect_uri=session.callback_url),
        oauth_errors=LOGIN_TIME_ERRORS,
        message_key="upstream.code_invalid",
    )
    return None


@_check("user_info", "user_info returns the profile exchange reported")
def _user_info(session: ContractSession) -> str | None:
    identity = session.identity()
    result = session.connector.user_info(identity.tokens.access_token, identity.openid)
    _require(
        isinstance(result, tuple) and len(result) == 3,
        "user_info must return (nickname, picture, profile)",
    )
    nickname, picture, profile = result
    _require(isinstance(nickname, str), "user_info: nickname must be a string")
    _require(picture is None or isinstance(picture, str), "user_info: picture must be str or None")
    _require(isinstance(profile, dict), "user_info: profile must be a dict")
    _require_json(profile, "user_info: profile")
    _require(
        (nickname, picture) == (identity.nickname, identity.picture),
        "user_info must parse the profile as exchange does (nickname, picture differ)",
    )
    return None


@_check("check_token", "check_token names the token's owner")
def _check_token(session: ContractSession) -> str | None:
    identity = session.identity()
    result = session.connector.check_token(identity.tokens.access_token)
    _require(
        isinstance(result, tuple) and len(result) == 2,
        "check_token must return (openid, unionid)",
    )
    _require(result[0] == identity.openid, "check_token named another openid than exchange")
    return None


@_check("dead_tokens", "unknown tokens are upstream.token_expired with invalid_grant")
def _dead_tokens(session: ContractSession) -> str | None:
    identity = session.identity()
    bogus = secrets.token_hex(16)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("check_token(an unknown token)", lambda: session.connector.check_token(bogus)),
        (
            "user_info(an unknown token)",
            lambda: session.connector.user_info(bogus, identity.openid),
        ),
        ("refresh(an unknown token)", lambda: session.connector.refresh(bogus)),
    ]
    for what, call in calls:
        session.expect_error(
            what,
            call,
            oauth_errors={"invalid_grant"},
            message_key="upstream.token_expired",
            sensitive=[bogus],
        )
    return None


@_check("refresh", "a refresh token yields working tokens (and is spent, if single use)")
def _refresh(session: ContractSession) -> str | None:
    identity = session.identity()
    old = identity.tokens.refresh_token
    if old is None:
        return "not applicable: exchange returned no refresh token"
    fresh = _check_tokens(session.connector.refresh(old), "refresh()")
    session.remember_tokens(fresh)
    openid, _ = session.connector.check_token(fresh.access_token)
    _require(openid == identity.openid, "the refreshed access token belongs to someone else")
    if not session.adapter.single_use_refresh_tokens:
        return None
    _require(fresh.refresh_token is not None, "a single-use refresh token must be rotated")
    session.expect_error(
        "refresh(a spent refresh token)",
        lambda: session.connector.refresh(old),
        oauth_errors={"invalid_grant"},
        message_key="upstream.token_expired",
    )
    return None


@_check("unionid", "want_unionid yields a stable UnionID, also from check_token")
def _unionid(session: ContractSession) -> str | None:
    if not session.adapter.supports_unionid:
        return "not applicable: the adapter says the upstream has no UnionID"
    identity = session.identity(want_unionid=True)
    _require(bool(identity.unionid), "exchange(want_unionid=True) returned no unionid")
    again = session.identity(want_unionid=True)
    _require(again.unionid == identity.unionid, "the same user got two UnionIDs")
    result = session.connector.check_token(identity.tokens.access_token, want_unionid=True)
    _require(
        tuple(result) == (identity.openid, identity.unionid),
        "check_token(want_unionid=True) disagrees with exchange",
    )
    return None


@_check("unreachable", "a dead upstream is UpstreamUnavailable (temporarily_unavailable), fast")
def _unreachable(session: ContractSession) -> str | None:
    options = session.adapter.unreachable_options(session.upstream.options)
    if options is None:
        return "not applicable: the adapter gives no unreachable options"
    connector = session.build(options)
    code, token = secrets.token_hex(16), secrets.token_hex(16)
    calls: list[tuple[str, Callable[[], object]]] = [
        (
            "exchange(upstream down)",
            lambda: connector.exchange(code=code, redirect_uri=session.callback_url),
        ),
        ("refresh(upstream down)", lambda: connector.refresh(token)),
        ("check_token(upstream down)", lambda: connector.check_token(token)),
    ]
    for what, call in calls:
        started = time.monotonic()
        session.expect_error(
            what,
            call,
            kind=UpstreamUnavailable,
            oauth_errors={"temporarily_unavailable"},
            message_key="upstream.unavailable",
            sensitive=[code, token],
        )
        _require(
            time.monotonic() - started < _UNREACHABLE_SECONDS,
            f"{what} took more than {_UNREACHABLE_SECONDS:g}s",
        )
    return None


@_check("no_secret_leak", "no secret, code or token in errors, URLs, repr() or the logs")
def _no_secret_leak(session: ContractSession) -> str | None:
    if not session.errors:
        _bad_code(session)
    # Again with everything seen since: a token learned later may be in an earlier error.
    for what, error in session.errors:
        session.check_error(what, error)
    session.require_no_secret([repr(session.connector)], "repr(connector)")
    session.require_no_secret(session.log_texts, "a log record of the connector")
    return None


#: Every check, in the order :func:`run_contract` runs them (``no_secret_leak`` last).
CHECKS: tuple[ContractCheck, ...] = tuple(_CHECKS)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class CheckResult:
    """``outcome`` is ``passed`` or ``failed``; ``detail`` the failure or a note."""

    name: str
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class ContractReport:
    connector: str
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(result.outcome == "passed" for result in self.results)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(result for result in self.results if result.outcome != "passed")

    def summary(self) -> str:
        lines = [f"connector contract for {self.connector!r}:"]
        for result in self.results:
            detail = f": {result.detail}" if result.detail else ""
            lines.append(f"  {result.outcome.upper():6} {result.name}{detail}")
        return "\n".join(lines)

    def assert_ok(self) -> None:
        """Raise ContractFailure with the whole summary unless every check passed."""
        if not self.ok:
            raise ContractFailure(self.summary())


def run_contract(
    adapter: ContractAdapter,
    *,
    checks: Sequence[ContractCheck] = CHECKS,
    issuer: str = DEFAULT_ISSUER,
) -> ContractReport:
    """Run ``checks`` in one session; a check that raises anything fails, the rest go on."""
    name = str(getattr(adapter, "name", "?"))
    results: list[CheckResult] = []
    session = ContractSession(adapter, issuer=issuer)
    try:
        session.start()
    except Exception as exc:
        failed = CheckResult("setup", "failed", session.mask(_describe(exc)))
        return ContractReport(name, (failed,))
    try:
        for check in checks:
            results.append(_run_one(check, session))
    finally:
        session.close()
    return ContractReport(name, tuple(results))


def _run_one(check: ContractCheck, session: ContractSession) -> CheckResult:
    try:
        note = check.run(session)
    except Exception as exc:
        return CheckResult(check.name, "failed", session.mask(_describe(exc)))
    return CheckResult(check.name, "passed", note or "")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ContractFailure):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
