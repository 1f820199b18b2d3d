"""The browser side of QQ login: /oauth2.0/authorize, the /oauth2.0/show login page,
the login form post, and cancel (qq-connect.md §2.1, §2.7, §8).

Errors here are HTML pages showing ``<description>(<code>)`` with no redirect, because
real QQ never sends a broken request back to the client.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

from flask import Blueprint, Response, render_template, request

from broker.emulator.common import begin, merged_params
from broker.emulator.settings import EmulatorSettings
from broker.emulator.state import EmulatorState
from broker.emulator.users import EmulatorUser
from broker.emulator.wire import ERROR_MEANINGS_ZH, QQError, qq_response
from broker.web.messages import pick_locale

bp = Blueprint("qq_authorize", __name__)

MAX_REDIRECT_URI = 1024  # §2.7

#: The emulator's own HTML pages (not QQ's API bodies): no script at all, our stylesheet
#: only, forms may post back here and follow the redirect to any registered callback.
PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self' http: https:; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class AuthorizeRequest:
    """A validated authorize request, carried through the login page unchanged."""

    client_id: str
    redirect_uri: str
    state: str
    scope: str
    display: str

    def form_fields(self) -> dict[str, str]:
        """Hidden fields of the login form: what the POST needs to re-validate."""
        fields = {
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "response_type": "code",
            "state": self.state,
            "scope": self.scope,
        }
        if self.display:
            fields["display"] = self.display
        return fields


def parse_authorize(params: dict[str, str], settings: EmulatorSettings) -> AuthorizeRequest:
    """Validate in QQ's order: response_type 100000, client_id 100001/100008, callback 100010.

    Only ``response_type=code`` is emulated; the implicit flow (§2.6) answers 100000.
    """
    if params.get("response_type") != "code":
        raise QQError(100000)
    client_id = params.get("client_id", "")
    if not client_id:
        raise QQError(100001)
    if client_id != settings.app_id:
        raise QQError(100008)
    redirect_uri = params.get("redirect_uri", "")
    if not callback_allowed(redirect_uri, settings):
        raise QQError(100010)
    return AuthorizeRequest(
        client_id,
        redirect_uri,
        params.get("state", ""),
        params.get("scope", ""),
        params.get("display", ""),
    )


def callback_allowed(redirect_uri: str, settings: EmulatorSettings) -> bool:
    """§2.7: host+path must equal a registered callback exactly; the query is ignored.

    No ``#``, at most 1024 characters, no port or ``localhost`` (except loopback hosts
    when ``allow_loopback_ports``). The scheme is not compared, only required to be http(s).
    """
    if not redirect_uri or len(redirect_uri) > MAX_REDIRECT_URI or "#" in redirect_uri:
        return False
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in redirect_uri):
        return False
    host_path = _host_path(redirect_uri)
    if host_path is None or not _port_allowed(redirect_uri, settings):
        return False
    registered = {_host_path(callback) for callback in settings.callbacks}
    return host_path in registered


def _host_path(url: str) -> str | None:
    parts = urlsplit(url.split("?", 1)[0])
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    return parts.netloc + parts.path


def _port_allowed(url: str, settings: EmulatorSettings) -> bool:
    parts = urlsplit(url.split("?", 1)[0])
    try:
        port = parts.port
    except ValueError:
        return False
    host = parts.hostname or ""
    if port is None and host != "localhost":
        return True
    return settings.allow_loopback_ports and _is_loopback(host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def append_query(redirect_uri: str, query: str) -> str:
    """Append with ``&`` when the callback already has a query, else ``?`` (§1 step 2)."""
    return redirect_uri + ("&" if "?" in redirect_uri else "?") + query


def redirect_to(location: str) -> Response:
    response = qq_response("", status=302)
    response.headers["Location"] = location
    return response


def page_locale() -> str:
    """``ui_locales`` (when a caller passes it; QQ itself ignores it), then Accept-Language.

    Real QQ shows Chinese only; the emulator follows the browser so an English-speaking
    developer can read it, and defaults to zh-CN like QQ.
    """
    return pick_locale(merged_params().get("ui_locales"), request.accept_languages.values())


def html_page(template: str, **context: object) -> Response:
    """One of the emulator's pages in the user's language, with QQ's headers plus a CSP."""
    response = qq_response(render_template(template, locale=page_locale(), **context))
    response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


def error_page(error: QQError) -> Response:
    """The graph.qq.com error page: ``<description>(<code>)``, HTTP 200, no redirect."""
    return html_page(
        "error.html",
        code=error.code,
        description=error.description,
        meaning=ERROR_MEANINGS_ZH.get(error.code, ""),
    )


def login_with_code(state: EmulatorState, auth: AuthorizeRequest, user: EmulatorUser) -> Response:
    """Success: 302 to the callback with ``code=…&state=…`` (§2.1, §8)."""
    code = state.issue_code(user, auth.redirect_uri)
    query = f"code={code}&state={quote(auth.state, safe='')}"
    return redirect_to(append_query(auth.redirect_uri, query))


def cancel(state: EmulatorState, auth: AuthorizeRequest) -> Response:
    """PC QQ just closes the window (§2.1); the old WAP flow redirected with usercancel=1."""
    if state.control.cancel_mode == "redirect":
        query = f"usercancel=1&state={quote(auth.state, safe='')}"
        return redirect_to(append_query(auth.redirect_uri, query))
    return html_page("cancelled.html")


@bp.get("/oauth2.0/authorize")
def authorize() -> Response:
    """Validate, then 302 to the login page (or log in at once under ``auto_login``)."""
    params = merged_params()
    state = begin("authorize", "authorize", params)
    try:
        auth = parse_authorize(params, state.settings)
    except QQError as error:
        return error_page(error)
    auto_login = state.control.auto_login
    if auto_login == "cancel":
        return cancel(state, auth)
    user = state.user(auto_login) if auto_login else None
    if user is not None:
        return login_with_code(state, auth, user)
    show = {
        "which": "Login",
        "display": "mobile" if auth.display == "mobile" else "pc",
        "client_id": auth.client_id,
        "redirect_uri": auth.redirect_uri,
        "response_type": "code",
        "state": auth.state,
    }
    if auth.scope:
        show["scope"] = auth.scope
    return redirect_to(request.host_url + "oauth2.0/show?" + urlencode(show))


@bp.get("/oauth2.0/show")
def show() -> Response:
    """The login page: one button per test user plus 取消/Cancel (100028 without ``which``)."""
    params = merged_params()
    state = begin("show", "authorize", params)
    if not params.get("which"):
        return error_page(QQError(100028))
    try:
        auth = parse_authorize(params, state.settings)
    except QQError as error:
        return error_page(error)
    users = [
        {"id": user.id, "nickname": user.nickname, "openid": state.openid(user)}
        for user in state.users
    ]
    return html_page(
        "login.html",
        auth=auth,
        fields=auth.form_fields(),
        users=users,
        mobile=auth.display == "mobile",
    )


@bp.post("/oauth2.0/authorize")
def authorize_post() -> Response:
    """The login form's post: re-validate everything, then issue a code or cancel."""
    params = merged_params()
    state = begin("authorize", "authorize", params)
    try:
        auth = parse_authorize(params, state.settings)
    except QQError as error:
        return error_page(error)
    if params.get("action") == "cancel":
        return cancel(state, auth)
    user = state.user(params.get("user", ""))
    if user is None:
        return error_page(QQError(100018, "unknown emulator user"))
    return login_with_code(state, auth, user)
