"""The QQ Connect (QQ互联) connector: every QQ wire quirk lives here and nowhere else.

The recipe is qq-connect.md section 7.1. What makes QQ different from a standard OAuth2
provider, and why this module looks the way it does:

* Errors come back with HTTP 200, in one of three body formats (form-encoded, JSONP,
  JSON) whatever the Content-Type says (section 3). :func:`parse_qq_body` accepts all
  three; the status code only matters for transport failures (5xx).
* ``expires_in`` is a JSON string under ``fmt=json`` (section 3.1).
* The openid needs ``/oauth2.0/me`` unless the token response carried it
  (``need_openid=1``), and ``/me`` must name our own app id, or a token minted for some
  other app is being passed off as ours (token substitution, security checklist UP-07).
* Failures must fail closed: an empty, ``null`` or ``"None"`` openid must never become an
  account (UP-06). Identifiers are therefore checked for type, length and charset.

Secrets: the app key travels only in POST bodies, never in a URL, so no HTTP library log
line carries it. Access tokens must go in the ``/me`` and ``get_user_info`` query strings
(QQ accepts nothing else there, section 2.4/2.5), so urllib3's DEBUG logging of request
lines shows them; keep ``urllib3`` above DEBUG in production. Nothing this module logs or
raises contains a token, a code, the app key or a raw body.

Time bounds: every call uses ``timeout=(connect_timeout, read_timeout)``; while reading the
body, a total deadline (connect + read timeout) is enforced by checking elapsed time between
chunks and shrinking the socket timeout, so a server that dribbles bytes cannot hold a
worker for long (UP-15). Response *headers* are bounded per socket read only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from broker import __version__
from broker.connectors.base import (
    Identity,
    UpstreamCancelled,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTokens,
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    from broker.connectors.registry import ConnectorContext

__all__ = [
    "DEFAULT_EXPIRES_IN",
    "QQ_ERROR_CODES",
    "QQBodyError",
    "QQConnector",
    "QQErrorRule",
    "factory",
    "parse_qq_body",
]

log = logging.getLogger("broker.connectors.qq")

#: Used when QQ omits expires_in or sends nonsense: 60 days, as observed in 2025 (section 6).
DEFAULT_EXPIRES_IN = 5_184_000
_MAX_EXPIRES_IN = 10 * 365 * 86_400
#: Real codes are 32 upper-case hex (section 6); leave headroom, but bound what we forward.
MAX_CODE_LENGTH = 128
_MAX_TOKEN_LENGTH = 512
_MAX_QQ_MESSAGE = 300
_CHUNK = 65_536

_JSONP = re.compile(r"^\s*callback\s*\(\s*(\{.*\})\s*\)\s*;?\s*$", re.DOTALL)  # section 7.1
_FORM_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_INTEGER = re.compile(r"[+-]?[0-9]{1,15}")
_CODE = re.compile(r"[A-Za-z0-9]+")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII; real tokens are 32 hex (section 6)
_IDENTIFIER = re.compile(r"[A-Za-z0-9_-]{1,64}")  # openid 32 hex, unionid UID_+32 hex (section 6)
# Strings a buggy upstream or client library produces from a missing value (UP-06).
_PLACEHOLDER_IDS = frozenset({"none", "null", "nil", "undefined", "nan"})
# The authorize error page shows "<description>(<code>)", e.g. "redirect uri is illegal(100010)"
# (section 2.1); the exact HTML is unknown, so only the OAuth-layer code pattern is trusted.
_PAGE_ERROR_CODE = re.compile(r"\((100\d{3})\)")

_HEADERS = {
    "User-Agent": f"qq-oidc-broker/{__version__}",
    "Accept": "application/json, text/javascript, text/html;q=0.9, */*;q=0.5",
    # QQ's bodies are tiny; no compression means the byte cap is exactly what we read.
    "Accept-Encoding": "identity",
}

#: Endpoint name (as in UpstreamError.endpoint) -> path under base_url (section 2).
_PATHS = MappingProxyType(
    {
        "token": "/oauth2.0/token",
        "me": "/oauth2.0/me",
        "get_user_info": "/user/get_user_info",
        "authorize": "/oauth2.0/authorize",  # only for check_callback (doctor)
    }
)


# --------------------------------------------------------------------------- code table


@dataclass(frozen=True)
class QQErrorRule:
    """How one QQ error code is presented: to the relying party, the user and the operator.

    ``summary`` and ``action`` are ASCII English and form the operator hint
    ``"QQ <summary> (<code>): <action>"``.
    """

    message_key: str
    summary: str
    action: str
    oauth_error: str = "server_error"


def _rule(
    message_key: str, summary: str, action: str, oauth_error: str = "server_error"
) -> QQErrorRule:
    return QQErrorRule(message_key, summary, action, oauth_error)


_BROKER_BUG = "this is a broker bug, please report it"
_MISCONFIGURED = "upstream.misconfigured"
_REJECTED = "upstream.rejected"
_EXPIRED = "upstream.token_expired"
_CODE_INVALID = "upstream.code_invalid"
_RELOGIN = "the user must log in to QQ again"
_CALLBACK_ACTION = (
    "the callback URL registered at QQ Connect must equal the broker's {issuer}/qq/callback "
    "(full URL, encoded once; changes take up to 30 minutes)"
)
_PERMISSION_ACTION = (
    "check upstream.qq.scope and the API permissions of the app in the QQ Connect console"
)


def _token_expired(summary: str) -> QQErrorRule:
    # Refresh-time failures; at login time the connector reports them as server_error.
    return _rule(_EXPIRED, summary, _RELOGIN, "invalid_grant")


#: Every QQ code of qq-connect.md section 5.1 (OAuth layer: ``error``) and 5.2 (OpenAPI
#: layer: ``ret``), in one place. Unlisted codes fall back to :data:`_UNKNOWN_RULE`.
QQ_ERROR_CODES: Mapping[int, QQErrorRule] = MappingProxyType(
    {
        100000: _rule(_REJECTED, "refused response_type", _BROKER_BUG),
        100001: _rule(_MISCONFIGURED, "got no client_id", "set upstream.qq.app_id"),
        100002: _rule(
            _MISCONFIGURED, "got no client_secret", "set upstream.qq.app_key (is QQ_APP_KEY set?)"
        ),
        100003: _rule(_REJECTED, "wants an Authorization header", _BROKER_BUG),
        100004: _rule(_REJECTED, "refused grant_type", _BROKER_BUG),
        100005: _rule(_REJECTED, "got no code", _BROKER_BUG),
        100006: _token_expired("got no refresh token"),
        100007: _rule(_REJECTED, "got no access token", _BROKER_BUG),
        100008: _rule(_MISCONFIGURED, "does not know the app id", "check upstream.qq.app_id"),
        100009: _rule(_MISCONFIGURED, "rejected the app key", "check upstream.qq.app_key"),
        100010: _rule(_MISCONFIGURED, "rejected the redirect_uri", _CALLBACK_ACTION),
        100011: _rule(
            _MISCONFIGURED,
            "says the app is not online",
            "check the app's review status in the QQ Connect console",
        ),
        100012: _rule(_REJECTED, "wants a POST request", _BROKER_BUG),
        100013: _token_expired("says the access token is invalid or revoked"),
        100014: _token_expired("says the access token expired"),
        100015: _token_expired("says the access token was revoked"),
        100016: _token_expired("could not verify the access token"),
        100017: _rule(_REJECTED, "could not resolve the app id", "retry later"),
        100018: _rule(
            _CODE_INVALID, "could not issue a code", "do not retry; the user must log in again"
        ),
        100019: _rule(
            _CODE_INVALID,
            "rejected the code (invalid or expired)",
            "do not retry; the user must log in again",
        ),
        100020: _rule(
            _CODE_INVALID,
            "says the code was already used",
            "do not retry; the user must log in again",
        ),
        100021: _token_expired("rejected the refresh token (used, expired or unknown)"),
        100022: _token_expired("could not issue a refresh token"),
        **{
            code: _rule(
                _REJECTED,
                "failed an internal authorization check",
                "retry later; if it persists, ask QQ Connect support",
            )
            for code in range(100023, 100028)
        },
        100028: _rule(_REJECTED, "is missing the login page parameter 'which'", _BROKER_BUG),
        100029: _rule(_REJECTED, "calls the HTTP request malformed", _BROKER_BUG),
        100030: _rule(_MISCONFIGURED, "says the user has not granted this API", _PERMISSION_ACTION),
        100031: _rule(
            _MISCONFIGURED, "says the app has no permission for this API", _PERMISSION_ACTION
        ),
        100044: _rule(
            _MISCONFIGURED, "rejected the app signature", "check the app registration at QQ Connect"
        ),
        100048: _rule(
            "upstream.unionid_not_enabled",
            "says UnionID is not enabled (companyid not set)",
            "UnionID must be enabled for the app at QQ Connect, or use subject: openid",
        ),
        # OpenAPI layer (get_user_info `ret`), section 5.2
        -1: _rule(
            _REJECTED,
            "rejected the get_user_info parameters (app id or openid)",
            "check upstream.qq.app_id; the openid must come from the same app",
        ),
        -2: _rule(_MISCONFIGURED, "does not know the app id", "check upstream.qq.app_id"),
        -3: _rule(
            _MISCONFIGURED, "says the app has no permission for this API", _PERMISSION_ACTION
        ),
        -20: _rule(_MISCONFIGURED, "says the user has not granted this API", _PERMISSION_ACTION),
        -21: _token_expired("says the access token was revoked"),
        -22: _rule(_REJECTED, "rejected the openid", _BROKER_BUG),
        -23: _rule(_REJECTED, "rejected the openkey", _BROKER_BUG),
        -24: _rule(_REJECTED, "rejected the openid", _BROKER_BUG),
        1002: _token_expired("says the user is not logged in"),
    }
)

_UNKNOWN_RULE = _rule(
    _REJECTED,
    "answered an unlisted error code",
    "see qq-connect.md section 5 and QQ's message in the broker log",
)


def rule_for(code: int) -> QQErrorRule:
    """The table entry for a QQ code (the generic "rejected" rule when unlisted)."""
    return QQ_ERROR_CODES.get(code, _UNKNOWN_RULE)


# --------------------------------------------------------------------------- body parsing


class QQBodyError(ValueError):
    """A body that is none of QQ's formats. The message is ASCII and never quotes the body."""


class _DuplicateKeyError(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two different "openid" values in one object is an attack or a bug; never pick one.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError
        result[key] = value
    return result


def _no_constants(_name: str) -> Any:
    raise ValueError("NaN/Infinity are not JSON")


def _json_object(text: str) -> dict[str, Any]:
    # Errors are recorded and raised outside the except block: a chained JSONDecodeError
    # carries the whole body (its .doc), which may hold tokens.
    reason = ""
    value: Any = None
    try:
        value = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constants)
    except _DuplicateKeyError:
        reason = "duplicate key in JSON"
    except RecursionError:
        reason = "JSON nested too deeply"
    except ValueError:
        reason = "malformed JSON"
    if reason:
        raise QQBodyError(reason)
    if not isinstance(value, dict):
        raise QQBodyError("JSON is not an object")
    return value


def _form_object(text: str) -> dict[str, Any]:
    # The default-mode token success body, e.g. "access_token=..&expires_in=..&refresh_token=.."
    # (section 3.1); whether it ends in "\n" is unknown (section 3.2), so values are stripped.
    pairs: list[tuple[str, str]] = []
    failed = False
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, max_num_fields=64)
    except ValueError:
        failed = True
    if failed or not pairs:
        raise QQBodyError("neither JSON, JSONP nor form-encoded")
    result: dict[str, Any] = {}
    for key, value in pairs:
        if not _FORM_KEY.fullmatch(key):
            raise QQBodyError("neither JSON, JSONP nor form-encoded")
        if key in result:
            raise QQBodyError("duplicate key in form body")
        result[key] = value.strip()
    return result


def parse_qq_body(text: str) -> dict[str, Any]:
    """Decode any of QQ's body formats into a dict, ignoring Content-Type (section 7.1).

    JSONP ``callback( {...} );`` (default ``/me`` and default-mode token errors), plain JSON
    (``fmt=json``, get_user_info) and form-encoded (default-mode token success). JSONP is
    matched with a greedy regex anchored at both ends, so ``)`` inside JSON strings and
    multi-line bodies are fine (section 3.2, 7). Raises :class:`QQBodyError`.
    """
    body = text.lstrip("\ufeff").strip()
    if not body:
        raise QQBodyError("empty body")
    match = _JSONP.match(body)
    if match:
        return _json_object(match.group(1))
    if body.startswith("{"):
        return _json_object(body)
    return _form_object(body)


def _as_int(value: object) -> int | None:
    """QQ numbers may be JSON ints or numeric strings (section 3.1); bools are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _expires_in(value: object) -> int:
    """``int(str(v))`` for str or int, default 60 days when absent or absurd (section 7.1.3)."""
    seconds = _as_int(value)
    if seconds is None or not 0 < seconds <= _MAX_EXPIRES_IN:
        return DEFAULT_EXPIRES_IN
    return seconds


def _identifier(value: object) -> str | None:
    """An openid/unionid as the broker may key accounts on it, else None (UP-06, UP-08)."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        return None
    if value.lower() in _PLACEHOLDER_IDS:
        return None
    return value


def _safe_text(value: object, limit: int = 80) -> str:
    """A short ASCII rendering of an upstream value for a hint (non-secret values only)."""
    text = value if isinstance(value, str) else repr(value)
    return text[:limit].encode("ascii", "backslashreplace").decode("ascii")


# --------------------------------------------------------------------------- connector


def _new_session() -> requests.Session:
    """One pooled keep-alive session shared by every login.

    No retries anywhere: a retried token POST would spend the single-use code twice
    (100020), and retries would break the time bound. No cookies: one jar shared by all
    users' calls must never carry state from one login into another.
    """
    session = requests.Session()
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=Retry(0, read=False))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class QQConnector:
    """Talks to graph.qq.com (or the emulator) for logins and refreshes.

    Safe to share between threads: calls keep no per-call state on the instance, and the
    session only pools connections.
    """

    name = "qq"

    def __init__(
        self,
        *,
        app_id: str,
        app_key: str,
        base_url: str = "https://graph.qq.com",
        scope: str = "get_user_info",
        session: requests.Session | None = None,
        connect_timeout: float = 3.05,
        read_timeout: float = 5.0,
        max_body_bytes: int = 1_048_576,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("base_url must be an absolute http(s) URL")
        if not app_id or not app_key:
            raise ValueError("app_id and app_key must not be empty")
        if connect_timeout <= 0 or read_timeout <= 0 or max_body_bytes <= 0:
            raise ValueError("timeouts and max_body_bytes must be positive")
        self.app_id = app_id
        self._app_key = app_key
        self.base_url = base_url.rstrip("/")
        self.scope = scope
        self._owns_session = session is None
        self._session = session if session is not None else _new_session()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_body_bytes = max_body_bytes

    def __repr__(self) -> str:
        return f"QQConnector(app_id={self.app_id!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ public interface

    def authorization_url(
        self, *, redirect_uri: str, state: str, display: str | None = None
    ) -> str:
        """The QQ authorize URL (section 2.1), every value encoded exactly once (7.1.6)."""
        if not state:
            raise ValueError("state must not be empty")
        if display not in (None, "pc", "mobile"):
            raise ValueError("display must be None, 'pc' or 'mobile'")
        params = {
            "response_type": "code",
            "client_id": self.app_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "scope": self.scope,
        }
        if display:
            params["display"] = display
        return f"{self.base_url}/oauth2.0/authorize?{urlencode(params)}"

    def parse_callback(self, args: Mapping[str, str]) -> str:
        """The code from QQ's redirect (section 2.1).

        A PC cancel never comes back at all; the old WAP flow sent ``usercancel=1``, and a
        callback without a code can only mean the login did not happen: both are cancels.
        """
        if args.get("usercancel", "0").strip() not in ("", "0"):
            raise self._cancelled("the user cancelled the QQ login (usercancel)")
        code = args.get("code", "")
        if not code:
            raise self._cancelled("QQ redirected back without a code (login not completed)")
        self._require_code(code)
        return code

    def exchange(self, *, code: str, redirect_uri: str, want_unionid: bool = False) -> Identity:
        """Code -> tokens -> (``/me``) -> get_user_info -> Identity (section 7.1)."""
        self._require_code(code)
        tokens, token_openid = self._exchange_code(code, redirect_uri)
        openid, unionid = token_openid, None
        if openid is None or want_unionid:
            # need_openid=1 usually saves this call; UnionID always needs it (section 2.4).
            openid, unionid = self._me(tokens.access_token, want_unionid, login=True)
            if token_openid is not None and token_openid != openid:
                raise self._protocol("me", "the openid from /me differs from the token's")
        profile = self._user_info(tokens.access_token, openid)
        return Identity(
            openid=openid,
            unionid=unionid,
            nickname=_nickname(profile),
            picture=_picture(profile),
            profile=profile,
            tokens=tokens,
        )

    def refresh(self, refresh_token: str) -> UpstreamTokens:
        """Spend a single-use refresh token for rotated tokens (section 2.3, 7.1.8).

        The caller must persist the returned refresh_token atomically: the old one is dead.
        """
        _require_stored_token(refresh_token, "refresh", "token")
        data = {
            "grant_type": "refresh_token",
            "client_id": self.app_id,
            "client_secret": self._app_key,
            "refresh_token": refresh_token,
            "fmt": "json",
        }
        body = self._call("POST", "token", data=data, secrets=(refresh_token,))
        self._raise_for_oauth_error(body, "token", login=False, secrets=(refresh_token,))
        return self._tokens(body)

    def check_token(self, access_token: str, want_unionid: bool = False) -> tuple[str, str | None]:
        """Ask ``/me`` whom a stored access token belongs to (for strict refresh).

        Returns ``(openid, unionid)``; unionid is None unless asked for. The token must have
        been minted for this app id (UP-07), or UpstreamProtocolError.
        """
        _require_stored_token(access_token, "access", "me")
        return self._me(access_token, want_unionid, login=False)

    def user_info(self, access_token: str, openid: str) -> tuple[str, str | None, dict[str, Any]]:
        """The current profile behind a stored access token, for strict refresh (section 2.5).

        Returns ``(nickname, picture, profile)`` parsed exactly as :meth:`exchange` fills an
        :class:`Identity`. A dead token raises UpstreamRejected with ``invalid_grant``
        (refresh time, not login time).
        """
        _require_stored_token(access_token, "access", "get_user_info")
        profile = self._user_info(access_token, openid, login=False)
        return _nickname(profile), _picture(profile), profile

    # ------------------------------------------------------------------ diagnostics (doctor)

    def check_credentials(self, redirect_uri: str) -> None:
        """Prove the app id and app key without a user, by exchanging a made-up code.

        QQ checks client_id (100008) and client_secret (100009) before the code (section 8;
        the order is marked [?] there), so "invalid or expired code" (100019, message key
        ``upstream.code_invalid``) means both credentials were accepted: return normally.
        Anything else raises the typed error a login would get.
        """
        bogus = secrets.token_hex(16).upper()  # shaped like a real code (section 6)
        try:
            self._exchange_code(bogus, redirect_uri)
        except UpstreamRejected as err:
            if err.message_key == _CODE_INVALID:
                return
            raise
        raise self._protocol("token", "QQ accepted a made-up authorization code")

    def check_callback(self, redirect_uri: str) -> None:
        """Ask QQ's authorize page whether ``redirect_uri`` is a registered callback.

        QQ validates response_type, client_id (100008) and redirect_uri (100010) before it
        shows the login page; a problem is an HTML page reading ``<description>(<code>)``
        and never a redirect (section 2.1, 8). A redirect (to the login page
        ``/oauth2.0/show``) means all passed. Nobody logs in, so no code is issued.
        """
        params = {
            "response_type": "code",
            "client_id": self.app_id,
            "redirect_uri": redirect_uri,
            "state": "doctor",
            "scope": self.scope,
        }
        deadline = time.monotonic() + self._connect_timeout + self._read_timeout
        response = self._send("GET", "authorize", params=params, data=None)
        if response.is_redirect:
            response.close()
            return
        page = self._read_response(response, "authorize", deadline).decode("utf-8", "replace")
        match = _PAGE_ERROR_CODE.search(page)
        if match is None:
            raise self._protocol(
                "authorize", "the authorize page neither redirected nor showed a QQ error code"
            )
        code = int(match.group(1))
        sent = f"; the broker sent redirect_uri={_safe_text(redirect_uri, 200)}"
        detail = sent if code == 100010 else ""
        raise self._rejected(code, None, "authorize", login=True, detail=detail)

    def close(self) -> None:
        """Close the connection pool, unless the session was handed in by the caller."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> QQConnector:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ QQ steps

    def _exchange_code(self, code: str, redirect_uri: str) -> tuple[UpstreamTokens, str | None]:
        # POST form, app key only in the body; redirect_uri byte-identical to the authorize
        # one (section 2.2, 7.1.6); fmt=json and need_openid=1 (section 7.1.1).
        data = {
            "grant_type": "authorization_code",
            "client_id": self.app_id,
            "client_secret": self._app_key,
            "code": code,
            "redirect_uri": redirect_uri,
            "fmt": "json",
            "need_openid": "1",
        }
        body = self._call("POST", "token", data=data, secrets=(code,))
        sent = f"; the broker sent redirect_uri={_safe_text(redirect_uri, 200)}"
        self._raise_for_oauth_error(body, "token", login=True, secrets=(code,), detail=sent)
        tokens = self._tokens(body)
        self._require_own_client_id(body, "token", required=False)
        if "openid" not in body:
            return tokens, None
        openid = _identifier(body["openid"])
        if openid is None:
            raise self._protocol("token", "the token response carries an unusable openid")
        return tokens, openid

    def _me(self, access_token: str, want_unionid: bool, *, login: bool) -> tuple[str, str | None]:
        params = {"access_token": access_token, "fmt": "json"}
        if want_unionid:
            params["unionid"] = "1"  # 1, not 2: 2 answered intermittently (section 2.4)
        body = self._call("GET", "me", params=params, secrets=(access_token,))
        self._raise_for_oauth_error(body, "me", login=login, secrets=(access_token,))
        self._require_own_client_id(body, "me", required=True)
        openid = _identifier(body.get("openid"))
        if openid is None:
            raise self._protocol("me", "/me returned a missing or unusable openid")
        if not want_unionid:
            return openid, None
        unionid = _identifier(body.get("unionid"))
        if unionid is None:
            # Never fall back to the openid: accounts keyed on unionid would split.
            raise self._protocol("me", "/me returned no usable unionid although unionid=1 was sent")
        return openid, unionid

    def _user_info(self, access_token: str, openid: str, *, login: bool = True) -> dict[str, Any]:
        # oauth_consumer_key is required (section 2.5); the body is always JSON.
        params = {"access_token": access_token, "oauth_consumer_key": self.app_id, "openid": openid}
        body = self._call("GET", "get_user_info", params=params, secrets=(access_token,))
        if "ret" not in body:
            raise self._protocol("get_user_info", "get_user_info returned no ret field")
        ret = _as_int(body["ret"])
        if ret is None:
            raise self._protocol("get_user_info", "get_user_info ret is not a number")
        if ret != 0:  # any ret != 0 fails, not only ret < 0 (section 5.2)
            raise self._rejected(
                ret, body.get("msg"), "get_user_info", login=login, secrets=(access_token,)
            )
        if _as_int(body.get("is_lost")) == 1:
            log.info("QQ get_user_info reports is_lost=1 (partial profile data)")
        return {key: value for key, value in body.items() if key not in ("ret", "msg")}

    # ------------------------------------------------------------------ checks

    def _tokens(self, body: Mapping[str, Any]) -> UpstreamTokens:
        access_token = body.get("access_token")
        if not _is_token(access_token):
            raise self._protocol("token", "the token response has no usable access_token")
        refresh_token = body.get("refresh_token")
        if refresh_token in (None, ""):
            refresh_token = None
        elif not _is_token(refresh_token):
            raise self._protocol("token", "the token response has an unusable refresh_token")
        return UpstreamTokens(
            access_token=access_token,
            refresh_token=refresh_token,
            expires_in=_expires_in(body.get("expires_in")),
            obtained_at=int(time.time()),
        )

    def _require_own_client_id(
        self, body: Mapping[str, Any], endpoint: str, *, required: bool
    ) -> None:
        """Token substitution guard (UP-07): the token must belong to *our* app id."""
        if "client_id" not in body and not required:
            return
        client_id = body.get("client_id")
        if isinstance(client_id, int) and not isinstance(client_id, bool):
            client_id = str(client_id)
        if client_id != self.app_id:
            raise self._protocol(
                endpoint,
                f"QQ says the token belongs to client_id {_safe_text(client_id)}, "
                f"not to upstream.qq.app_id {_safe_text(self.app_id)} (token substitution?)",
            )

    def _require_code(self, code: str) -> None:
        if len(code) > MAX_CODE_LENGTH or not _CODE.fullmatch(code):
            raise self._protocol("callback", "the callback code is too long or not alphanumeric")

    def _raise_for_oauth_error(
        self,
        body: Mapping[str, Any],
        endpoint: str,
        *,
        login: bool,
        secrets: tuple[str, ...] = (),
        detail: str = "",
    ) -> None:
        """OAuth-layer errors: an ``error`` key, int or numeric string (section 5.1, 7.1.2).

        Also the legacy ``code``/``msg`` pair that JustAuth checks for (section 3.1 notes).
        """
        if "error" in body:
            code = _as_int(body["error"])
            if code is None:
                raise self._protocol(endpoint, "the error field is not a number")
            message = body.get("error_description")
        else:
            code = _as_int(body.get("code")) if "msg" in body else None
            if not code or "access_token" in body:
                return
            message = body.get("msg")
        raise self._rejected(
            code,
            message,
            endpoint,
            login=login,
            secrets=secrets,
            detail=detail if code == 100010 else "",
        )

    # ------------------------------------------------------------------ errors

    def _rejected(
        self,
        code: int,
        message: object,
        endpoint: str,
        *,
        login: bool,
        secrets: tuple[str, ...] = (),
        detail: str = "",
    ) -> UpstreamRejected:
        rule = rule_for(code)
        oauth_error = rule.oauth_error
        if login and oauth_error == "invalid_grant":
            # invalid_grant is not an authorization-endpoint error (RFC 6749 4.1.2.1).
            oauth_error = "server_error"
        text = self._scrub(message, secrets)
        level = logging.INFO if rule.message_key == "upstream.token_expired" else logging.WARNING
        log.log(level, "QQ %s answered error %d: %s", endpoint, code, text)
        return UpstreamRejected(
            oauth_error=oauth_error,
            message_key=rule.message_key,
            hint=f"QQ {rule.summary} ({code}): {rule.action}{detail}",
            upstream_code=code,
            upstream_message=text,
            endpoint=endpoint,
        )

    def _protocol(self, endpoint: str, reason: str) -> UpstreamProtocolError:
        log.warning("QQ %s: unusable response: %s", endpoint, reason)
        return UpstreamProtocolError(
            oauth_error="server_error",
            message_key="upstream.protocol",
            hint=f"QQ Connect sent an unusable response: {reason}",
            endpoint=endpoint,
        )

    def _unavailable(self, endpoint: str, reason: str) -> UpstreamUnavailable:
        host = urlsplit(self.base_url).netloc
        log.warning("QQ %s unavailable: %s", endpoint, reason)
        return UpstreamUnavailable(
            oauth_error="temporarily_unavailable",
            message_key="upstream.unavailable",
            hint=f"QQ Connect ({host}) is unavailable: {reason}; check outbound network",
            endpoint=endpoint,
        )

    def _cancelled(self, hint: str) -> UpstreamCancelled:
        log.info("QQ callback: %s", hint)
        return UpstreamCancelled(
            oauth_error="access_denied",
            message_key="upstream.cancelled",
            hint=hint,
            endpoint="callback",
        )

    def _scrub(self, message: object, secrets: tuple[str, ...]) -> str | None:
        """QQ's own text for logs, truncated, with any echoed secret masked."""
        if not isinstance(message, str):
            return None
        text = message[:_MAX_QQ_MESSAGE]
        for secret in (self._app_key, *secrets):
            if secret:
                text = text.replace(secret, "***")
        return text

    # ------------------------------------------------------------------ HTTP

    def _call(
        self,
        method: str,
        endpoint: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        secrets: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """One bounded HTTP exchange, decoded with :func:`parse_qq_body`."""
        raw = self._fetch(method, endpoint, params=params, data=data)
        text: str | None = None
        with contextlib.suppress(UnicodeDecodeError):  # no chained exception holding the body
            text = raw.decode("utf-8")
        if text is None:
            raise self._protocol(endpoint, "the body is not UTF-8")
        reason = ""
        try:
            return parse_qq_body(text)
        except QQBodyError as exc:
            reason = str(exc)
        raise self._protocol(endpoint, f"the body is not a QQ response ({reason})")

    def _fetch(
        self,
        method: str,
        endpoint: str,
        *,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
    ) -> bytes:
        # Total deadline for the whole call, enforced while reading the body (UP-15).
        deadline = time.monotonic() + self._connect_timeout + self._read_timeout
        response = self._send(method, endpoint, params=params, data=data)
        return self._read_response(response, endpoint, deadline)

    def _send(
        self,
        method: str,
        endpoint: str,
        *,
        params: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
    ) -> requests.Response:
        """Send one request (streamed, never following redirects); unreadable -> Unavailable."""
        response: requests.Response | None = None
        failure = ""
        try:
            response = self._session.request(
                method,
                self.base_url + _PATHS[endpoint],
                params=params,
                data=data,
                headers=_HEADERS,
                timeout=(self._connect_timeout, self._read_timeout),
                stream=True,
                allow_redirects=False,  # a redirect must never move our requests elsewhere
            )
        except requests.Timeout:
            failure = f"no answer within the timeout ({self._read_timeout:g}s read)"
        except requests.ConnectionError:
            failure = "connection failed"
        except requests.RequestException as exc:
            failure = f"request failed ({type(exc).__name__})"
        # Raised outside the except blocks: requests' messages contain the URL with the
        # access token, and a chained exception would carry it into tracebacks.
        if response is None:
            raise self._unavailable(endpoint, failure)
        return response

    def _read_response(self, response: requests.Response, endpoint: str, deadline: float) -> bytes:
        # At EOF urllib3 has already put the connection back in the pool (keep-alive) and
        # close() is a no-op; after an early exit close() drops the half-read socket.
        with response:
            if response.status_code >= 500:
                raise self._unavailable(endpoint, f"HTTP {response.status_code}")
            return self._read_capped(response, endpoint, deadline)

    def _read_capped(self, response: requests.Response, endpoint: str, deadline: float) -> bytes:
        """Read at most max_body_bytes (+1 to detect more) before the deadline."""
        declared = _as_int(response.headers.get("Content-Length"))
        if declared is not None and declared > self._max_body_bytes:
            raise self._unavailable(endpoint, "oversized response body")
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._unavailable(endpoint, "the response took too long (total time limit)")
            chunk, failure = _read_chunk(
                response,
                min(self._read_timeout, remaining),
                min(_CHUNK, self._max_body_bytes + 1 - size),
            )
            if failure:
                raise self._unavailable(endpoint, failure)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self._max_body_bytes:
                raise self._unavailable(endpoint, "oversized response body")
            chunks.append(chunk)


def _read_chunk(response: requests.Response, timeout: float, amount: int) -> tuple[bytes, str]:
    """At most one socket read, with the socket timeout shrunk to the time left."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(max(timeout, 0.01))
    try:
        return response.raw.read1(amount, decode_content=True), ""
    except (urllib3.exceptions.TimeoutError, TimeoutError):
        return b"", "the response body stalled (timeout)"
    except (urllib3.exceptions.HTTPError, OSError, requests.RequestException) as exc:
        return b"", f"the response broke off ({type(exc).__name__})"


def _require_stored_token(token: str, kind: str, endpoint: str) -> None:
    """Refresh-time calls need a usable stored token; without one the login is over."""
    if not _is_token(token):
        raise UpstreamRejected(
            oauth_error="invalid_grant",
            message_key="upstream.token_expired",
            hint=f"no usable upstream {kind} token is stored: the user must log in again",
            endpoint=endpoint,
        )


def _is_token(value: object) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and len(value) <= _MAX_TOKEN_LENGTH
        and _TOKEN.fullmatch(value) is not None
    )


def _nickname(profile: Mapping[str, Any]) -> str:
    # Taken as given: UTF-8, may be empty, never unique (section 4, 7.1.4).
    nickname = profile.get("nickname")
    return nickname if isinstance(nickname, str) else ""


def _picture(profile: Mapping[str, Any]) -> str | None:
    # figureurl_qq_2 (100 px, not for everyone) then figureurl_qq_1 (always there), as
    # QQ gave them (http://); claim mapping decides about https (section 4, 7.1.5).
    for key in ("figureurl_qq_2", "figureurl_qq_1"):
        value = profile.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


# --------------------------------------------------------------------------- entry point

#: Options :func:`factory` builds the connector from.
FACTORY_OPTIONS = ("app_id", "app_key", "base_url", "scope")
#: Keys of ``upstream.qq`` that the broker reads, not the connector; accepted and ignored
#: so that the whole section can be handed over.
_BROKER_OPTIONS = ("subject", "allow_staging_base_url")


def factory(options: Mapping[str, Any], context: ConnectorContext) -> QQConnector:
    """The ``qq`` entry point (group ``qq_oidc_broker.connectors``, see pyproject.toml).

    The built-in connector is loaded through the registry like any other, so that the
    path third-party connectors take is the one the default config exercises. From the
    config, ``options`` are the ``upstream.qq`` values that config.py has already checked
    (including the production rules: https and graph.qq.com), so ``context`` adds nothing
    here; the contract kit passes an emulator's options directly. Errors name the option
    and never its value (``app_key`` is a secret).
    """
    del context  # production rules for upstream.qq live in config.py
    unknown = sorted(set(options) - {*FACTORY_OPTIONS, *_BROKER_OPTIONS})
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(str, unknown))}; known: {', '.join(FACTORY_OPTIONS)}"
        )
    app_id = options.get("app_id")
    if isinstance(app_id, int) and not isinstance(app_id, bool):
        app_id = str(app_id)  # YAML reads an unquoted app id as a number
    return QQConnector(
        app_id=_text_option("app_id", app_id),
        app_key=_text_option("app_key", options.get("app_key")),
        base_url=_text_option("base_url", options.get("base_url", "https://graph.qq.com")),
        scope=_text_option("scope", options.get("scope", "get_user_info")),
    )


def _text_option(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value
