"""The OpenID provider facade: what the web layer calls.

It validates the relying party's authorization request, parks it while the
user logs in at QQ, and finishes it through Authlib once QQ has told us who
the user is. The token and userinfo endpoints are Authlib's.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from flask import Response
from flask import request as http_request

from broker.connectors.base import Connector, Identity, UpstreamError
from broker.metrics import upstream_reason
from broker.oidc.backchannel import BackchannelLogout
from broker.oidc.claims import stored_profile
from broker.oidc.discovery import provider_metadata
from broker.oidc.errors import (
    BadAuthorizationRequest,
    describe_upstream_error,
    error_redirect_uri,
    json_error,
    rfc6750_challenge,
    uniform_invalid_client,
)
from broker.oidc.grants import ClientUser
from broker.oidc.hints import verify_id_token_hint
from broker.oidc.logout import RPInitiatedLogout
from broker.oidc.models import Client, EndUser
from broker.oidc.registry import ClientDirectory
from broker.oidc.request_policy import check_authorization_parameters, parked_parameters
from broker.oidc.server import BrokerAuthorizationServer, ProviderContext
from broker.storage.base import (
    LoginTransaction,
    SessionRecord,
    StorageError,
    UserRecord,
    digest,
)

log = logging.getLogger("broker.oidc")

#: Authlib builds some descriptions from request input; these errors get constant text.
FIXED_DESCRIPTIONS = {"unsupported_response_type": "Only response_type=code is supported."}
#: RFC 6749 leaves state opaque; beyond this it is refused with a page, not echoed.
MAX_STATE_CHARS = 512
#: Pending QQ logins one browser may have at once (DO-02); older ones are dropped.
MAX_PENDING_LOGINS = 20
#: How often expired logins, codes and tokens are purged (by whichever request comes by).
PURGE_INTERVAL = 60


@dataclass(frozen=True)
class LoginStart:
    """Where to send the browser (QQ's authorize page) for a validated request."""

    upstream_url: str


@dataclass(frozen=True)
class RedirectToClient:
    """An authorization response (success or error) for the relying party.

    ``session_secret`` is set when a QQ login just created a broker session:
    the web layer puts it in the session cookie.
    """

    location: str
    session_secret: str | None = None
    #: OAuth 2.0 Form Post Response Mode: deliver the parameters by an auto-submitted POST.
    form_post: bool = False


class Provider:
    """The OpenID provider: Authlib's server plus the QQ login in the middle."""

    def __init__(self, ctx: ProviderContext, connector: Connector) -> None:
        self.ctx = ctx
        self.connector = connector
        self.server = BrokerAuthorizationServer(ctx)
        self.callback_url = f"{ctx.config.issuer}/qq/callback"
        self._metadata = (ctx.config.clients, provider_metadata(ctx.config))
        self._next_purge = 0
        self.logout = RPInitiatedLogout(ctx, self.server, BackchannelLogout(ctx))

    @property
    def metadata(self) -> dict[str, Any]:
        """The discovery document; rebuilt when the clients registered in the database
        change (they are re-read at most every ``CLIENT_CACHE_SECONDS``), since whether
        any client is pairwise, takes refresh tokens or e-mail shows in it. While the
        database is unreachable the last document stays: relying parties starting then
        still find the endpoints."""
        clients = self.ctx.clients
        if not isinstance(clients, ClientDirectory):
            return self._metadata[1]
        try:
            stored = (*self.ctx.config.clients, *clients.stored_configs())
        except StorageError:
            return self._metadata[1]
        if self._metadata[0] != stored:
            extra = stored[len(self.ctx.config.clients) :]
            self._metadata = (stored, provider_metadata(self.ctx.config, extra))
        return self._metadata[1]

    # -- /authorize ------------------------------------------------------------

    def start_login(
        self, browser_secret: str, session_secret: str | None = None
    ) -> LoginStart | RedirectToClient:
        """Validate the current /authorize request; answer from the broker session if it
        may, else park the request for the QQ round trip."""
        request = self.server.create_oauth2_request(None)
        client, redirect_uri = self._verified_client_and_redirect(request)
        state = request.payload.state
        try:
            check_authorization_parameters(request.payload.datalist)
            session_user = self._session_user(session_secret, request.payload.data, client)
            # OIDC Core §3.1.2.1: prompt=none without a usable session is login_required.
            grant = self.server.get_consent_grant(end_user=session_user)
        except OAuth2Error as err:
            description = FIXED_DESCRIPTIONS.get(err.error) or err.description or err.error
            return self._error(redirect_uri, err.error, description, state, request.payload.data)
        except ValueError:
            # Authlib refuses descriptions that echo unsafe request input.
            data = request.payload.data
            return self._error(redirect_uri, "invalid_request", "Malformed request.", state, data)

        if session_user is not None:
            # Single sign-on: the broker session answers, no QQ round trip.
            return self._authorization_response(grant.request, session_user)
        now = int(time.time())
        self._housekeeping(now)
        upstream_state = _new_state()
        self.ctx.store.cap_pending_logins(digest(browser_secret), MAX_PENDING_LOGINS - 1)
        self.ctx.store.create_login(
            LoginTransaction(
                state_digest=digest(upstream_state),
                client_id=client.client_id,
                request_params=parked_parameters(request.payload.data),
                browser_digest=digest(browser_secret),
                created_at=now,
                expires_at=now + self.ctx.config.lifetimes.login,
            )
        )
        display = "mobile" if _wants_mobile_page(request) else None
        url = self.connector.authorization_url(
            redirect_uri=self.callback_url, state=upstream_state, display=display
        )
        self.ctx.metrics.login_started(client.client_id)
        return LoginStart(url)

    def _session_user(
        self, session_secret: str | None, data: Mapping[str, str], client: Client
    ) -> EndUser | None:
        """The session's user, unless this request needs a fresh QQ login.

        ``prompt=login``/``select_account`` and an exceeded ``max_age`` (OIDC Core
        §3.1.2.1) send the user back to QQ, as does a client whose subject needs
        what that login did not ask for (the UnionID), and an ``id_token_hint`` or
        a requested ``sub`` (§5.5.1) naming someone else. ``auth_time`` stays the
        real QQ login time.
        """
        wanted = self._wanted_subject(data)
        if not session_secret:
            return None
        now = int(time.time())
        session = self.ctx.store.find_session(digest(session_secret), now)
        prompts = set(data.get("prompt", "").split())
        if session is None or prompts & {"login", "select_account"}:
            return None
        max_age = data.get("max_age")
        if max_age is not None and now - session.auth_time > int(max_age):
            return None
        stored = self.ctx.store.get_user(session.user_id)
        if stored is None:
            return None
        user = EndUser(
            stored.user_id, stored.unionid, stored.profile, session.auth_time, session.sid
        )
        principal = ClientUser(user, client)
        if not self.ctx.can_name(principal):
            return None
        if wanted is not None and wanted != self.ctx.subject(principal):
            return None
        return user

    def _wanted_subject(self, data: Mapping[str, str]) -> str | None:
        """The ``sub`` the request insists on: from a verified id_token_hint, or from
        ``claims={"id_token": {"sub": {"value": ...}}}``. A bad hint is invalid_request."""
        hint = data.get("id_token_hint")
        if hint:
            claims = verify_id_token_hint(hint, self.ctx.keyring, self.ctx.config.issuer)
            return str(claims.get("sub"))
        requested = json.loads(data["claims"]) if data.get("claims") else {}
        sub = ((requested.get("id_token") or {}).get("sub") or {}).get("value")
        return sub if isinstance(sub, str) else None

    def _authorization_response(
        self, request: OAuth2Request, user: EndUser, session_secret: str | None = None
    ) -> RedirectToClient:
        """Issue the code through Authlib: validation, storage, state and ``iss`` (RFC 9207)."""
        grant = self.server.get_authorization_grant(request)
        response = self.server.create_authorization_response(
            request=request, grant_user=user, grant=grant
        )
        location = response.headers.get("Location")
        if not location:
            raise BadAuthorizationRequest("unknown_client", "The request is no longer valid.")
        return RedirectToClient(location, session_secret, _form_post(request.payload.data))

    def _housekeeping(self, now: int) -> None:
        """Purge expired rows now and then, so abandoned logins cannot pile up."""
        if now >= self._next_purge:
            self._next_purge = now + PURGE_INTERVAL
            removed = self.ctx.store.purge_expired(now)
            if removed:
                log.info("purged %d expired logins, codes and tokens", removed)

    def _verified_client_and_redirect(self, request: OAuth2Request) -> tuple[Client, str]:
        """RFC 6749 §4.1.2.1: without a known client and registered URI, never redirect."""
        datalist = request.payload.datalist
        for name in ("client_id", "redirect_uri"):
            if len(datalist.get(name, [])) > 1:
                raise BadAuthorizationRequest("duplicate_parameter", f"'{name}' was sent twice.")
        client_id = request.payload.client_id
        if not client_id:
            raise BadAuthorizationRequest("missing_client", "The request has no client_id.")
        if len(request.payload.state or "") > MAX_STATE_CHARS:
            # Echoing a huge state into a redirect would itself be the attack (DO-02).
            raise BadAuthorizationRequest("bad_request", "The state parameter is too long.")
        client = self.server.query_client(client_id)
        if client is None:
            raise BadAuthorizationRequest("unknown_client", "The client_id is not registered.")
        redirect_uri = request.payload.redirect_uri
        if not redirect_uri:
            # OIDC Core §3.1.2.1: redirect_uri is required.
            raise BadAuthorizationRequest(
                "missing_redirect_uri", "The request has no redirect_uri."
            )
        if not client.check_redirect_uri(redirect_uri):
            raise BadAuthorizationRequest(
                "unregistered_redirect_uri", "The redirect_uri is not registered for this client."
            )
        return client, redirect_uri

    # -- /qq/callback ------------------------------------------------------------

    def finish_login(
        self, args: Mapping[str, list[str]], browser_secret: str | None
    ) -> RedirectToClient:
        """Check the callback, make the QQ calls, and answer the relying party."""
        tx = self._take_login(args, browser_secret)
        params = tx.request_params
        redirect_uri, rp_state = params["redirect_uri"], params.get("state")
        client = self.ctx.clients.get(tx.client_id)
        if client is None:
            raise BadAuthorizationRequest("unknown_client", "The client is no longer registered.")
        want_unionid = (client.config.subject or self.ctx.config.upstream.qq.subject) == "unionid"
        try:
            flat = {key: values[0] for key, values in args.items() if values}
            code = self.connector.parse_callback(flat)
            identity = self.connector.exchange(
                code=code, redirect_uri=self.callback_url, want_unionid=want_unionid
            )
        except UpstreamError as err:
            log.warning(
                "QQ login failed: %s (client=%s, qq_code=%s, qq_message=%s)",
                err.hint, tx.client_id, err.upstream_code, err.upstream_message,
            )  # fmt: skip
            description = describe_upstream_error(err)
            self.login_failed(upstream_reason(err), tx.client_id)
            return self._error(redirect_uri, err.oauth_error, description, rp_state, params)
        if want_unionid and not identity.unionid:
            no_unionid = "QQ returned no UnionID."
            self.login_failed("no_unionid", tx.client_id)
            return self._error(redirect_uri, "server_error", no_unionid, rp_state, params)
        user = self._remember(identity)
        if user is None:
            conflict = "QQ identity conflict."
            self.login_failed("identity_conflict", tx.client_id)
            return self._error(redirect_uri, "server_error", conflict, rp_state, params)
        user, session_secret = self._new_session(user)
        # authlib-notes pitfall 4: rebuild the parked request and let Authlib finish it.
        request = OAuth2Request("GET", f"{self.ctx.config.issuer}/authorize")
        request.payload = BasicOAuth2Payload(dict(params))
        response = self._authorization_response(request, user, session_secret)
        self.ctx.metrics.login_completed(tx.client_id)
        self.ctx.login_log.completed(tx.client_id, identity.openid)
        return response

    def login_failed(self, reason: str, client_id: str | None = None) -> None:
        """Count and log a QQ login that ended without a code (``reason``: a fixed word)."""
        self.ctx.metrics.login_failed(reason, client_id)
        self.ctx.login_log.failed(reason, client_id)

    def _new_session(self, user: EndUser) -> tuple[EndUser, str]:
        """A fresh broker session for every QQ login (a planted cookie is never upgraded)."""
        secret, sid = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
        expires_at = user.auth_time + self.ctx.config.lifetimes.session
        record = SessionRecord(sid, digest(secret), user.user_id, user.auth_time, expires_at)
        self.ctx.store.create_session(record)
        return replace(user, sid=sid), secret

    def _take_login(
        self, args: Mapping[str, list[str]], browser_secret: str | None
    ) -> LoginTransaction:
        for name in ("state", "code"):
            if len(args.get(name, [])) > 1:
                raise BadAuthorizationRequest("callback_duplicate", f"'{name}' was sent twice.")
        state = (args.get("state") or [""])[0]
        if not state or len(state) > 128:
            raise BadAuthorizationRequest("callback_no_state", "The callback has no valid state.")
        # RFC 9700 §4.7: only the browser that started the login may finish it.
        tx = self.ctx.store.consume_login(digest(state), digest(browser_secret or ""))
        if tx is None:
            if self.ctx.store.login_status(digest(state)) == "pending":
                raise BadAuthorizationRequest(
                    "login_other_browser", "This login was started in another browser."
                )
            raise BadAuthorizationRequest(
                "login_unknown", "This login is unknown or was already completed."
            )
        if tx.expires_at <= int(time.time()):
            raise BadAuthorizationRequest("login_expired", "This login has expired.")
        return tx

    def _remember(self, identity: Identity) -> EndUser | None:
        """Store the user's latest profile; None if QQ's ids conflict with what we know.

        A login that did not ask for the UnionID keeps the stored one, so clients
        keyed on it still work; a different UnionID for a known OpenID is refused
        (security-checklist UP-09) rather than silently relinked.
        """
        now = int(time.time())
        known = self.ctx.store.get_user(identity.openid)
        unionid = identity.unionid or (known.unionid if known else None)
        if known and known.unionid and identity.unionid and known.unionid != identity.unionid:
            log.error("QQ returned a different UnionID for a known OpenID; login refused")
            return None
        if identity.unionid:
            holder = self.ctx.store.find_user_by_unionid(identity.unionid)
            if holder is not None and holder.user_id != identity.openid:
                log.error("QQ returned a UnionID that belongs to another OpenID; login refused")
                return None
        profile = stored_profile(identity.nickname, identity.picture, identity.profile)
        self.ctx.store.upsert_user(UserRecord(identity.openid, unionid, profile, now))
        self.ctx.upstream.remember(identity)
        return EndUser(identity.openid, unionid, profile, auth_time=now)

    def _error(
        self,
        redirect_uri: str,
        error: str,
        description: str,
        state: str | None,
        data: Mapping[str, str],
    ) -> RedirectToClient:
        location = error_redirect_uri(
            redirect_uri,
            error=error,
            description=description,
            state=state,
            issuer=self.ctx.config.issuer,
        )
        return RedirectToClient(location, form_post=_form_post(data))

    # -- /token, /userinfo ---------------------------------------------------------

    def token_response(self) -> Response:
        return self._client_authenticated(self.server.create_token_response)

    def userinfo_response(self) -> Response:
        try:
            response: Response = self.server.create_endpoint_response("userinfo")
        except ValueError:
            response = json_error("invalid_request", "Malformed request.", 400)
        return rfc6750_challenge(response)

    def endpoint_response(self, name: str) -> Response:
        """Revocation, introspection: Authlib endpoints registered on the server."""
        return self._client_authenticated(lambda: self.server.create_endpoint_response(name))

    def _client_authenticated(self, respond: Callable[[], Response]) -> Response:
        """Run an endpoint that authenticates the client, with the checks Authlib lacks.

        RFC 6749 §2.3: one authentication method per request (Authlib takes Basic
        and body credentials together). §5.2: every failed client authentication
        gets the same answer, so an unknown client_id is not told from a bad secret.
        """
        if _several_client_credentials():
            return json_error("invalid_request", "Use one client authentication method.", 400)
        try:
            response = respond()
        except ValueError:
            return json_error("invalid_request", "Malformed request.", 400)
        return uniform_invalid_client(response)

    def readiness(self) -> tuple[bool, str]:
        try:
            self.ctx.store.ping()
            self.ctx.keyring.signing_key(self.ctx.config.keys.algorithm)
        except StorageError:
            return False, "storage unavailable"
        except KeyError:
            return False, "no active signing key"
        return True, "ok"

    def jwks(self) -> dict[str, Any]:
        return self.ctx.keyring.jwks()


def _new_state() -> str:
    """UP-01: a fresh 256-bit upstream state per login, never a constant."""
    return secrets.token_urlsafe(32)


def _form_post(data: Mapping[str, str]) -> bool:
    return data.get("response_mode") == "form_post"


#: User agents that get QQ's mobile login page (phones, tablets, in-app browsers).
MOBILE_AGENT = re.compile(r"Mobile|Android|iPhone|iPad|MicroMessenger|\bQQ/", re.IGNORECASE)


def _wants_mobile_page(request: OAuth2Request) -> bool:
    """OIDC Core §3.1.2.1 ``display=touch`` (or ``wap``), or a mobile browser."""
    if request.payload.data.get("display") in {"touch", "wap"}:
        return True
    return bool(MOBILE_AGENT.search(request.headers.get("User-Agent", "")))


def _several_client_credentials() -> bool:
    """An Authorization header plus a secret or an assertion in the body."""
    form = http_request.form
    in_body = "client_secret" in form or "client_assertion" in form
    return in_body and "Authorization" in http_request.headers
