"""An example upstream connector for a plain OAuth 2.0 server (RFC 6749 + a userinfo URL).

What a third-party connector has to do, and nothing more: implement the six methods of
``broker.connectors.base.Connector``, map every failure to a typed ``UpstreamError``
(the broker reads only ``oauth_error`` and ``message_key``), keep the client secret out
of URLs, messages and ``repr``, and offer a ``factory(options, context)`` for the
``qq_oidc_broker.connectors`` entry point.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from broker.connectors.base import (
    Identity,
    UpstreamCancelled,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTokens,
    UpstreamUnavailable,
)
from broker.connectors.registry import ConnectorContext

log = logging.getLogger(__name__)

OPTIONS = ("base_url", "client_id", "client_secret", "scope", "timeout")


class ExampleConnector:
    """Logs users in at an OAuth 2.0 server; the subject is its userinfo ``sub``."""

    name = "example"

    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        client_secret: str,
        scope: str = "profile",
        timeout: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self._timeout = timeout
        self._http = requests.Session()

    def __repr__(self) -> str:  # never the client secret
        return f"ExampleConnector(base_url={self.base_url!r}, client_id={self.client_id!r})"

    def close(self) -> None:
        self._http.close()

    # -- the Connector interface

    def authorization_url(
        self, *, redirect_uri: str, state: str, display: str | None = None
    ) -> str:
        if not state:
            raise ValueError("state must not be empty")
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "scope": self.scope,
        }
        return f"{self.base_url}/authorize?{urlencode(query)}"

    def parse_callback(self, args: Mapping[str, str]) -> str:
        error, code = args.get("error", ""), args.get("code", "")
        if error == "access_denied" or not (error or code):
            raise UpstreamCancelled(hint="the user did not complete the login", endpoint="callback")
        if error:
            raise UpstreamRejected(
                message_key="upstream.rejected",
                hint=f"the upstream sent error {error[:40]!r} to the callback",
                endpoint="callback",
            )
        return code

    def exchange(self, *, code: str, redirect_uri: str, want_unionid: bool = False) -> Identity:
        if want_unionid:
            raise UpstreamRejected(
                message_key="upstream.unionid_not_enabled",
                hint="this upstream has no UnionID: use subject openid or pairwise",
            )
        grant = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        tokens = self._token(grant, login=True)
        profile = self._userinfo(tokens.access_token, login=True)
        return Identity(
            openid=profile["sub"],
            unionid=None,
            nickname=str(profile.get("name") or ""),
            picture=profile.get("picture"),
            profile=profile,
            tokens=tokens,
        )

    def refresh(self, refresh_token: str) -> UpstreamTokens:
        return self._token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def check_token(self, access_token: str, want_unionid: bool = False) -> tuple[str, str | None]:
        return self._userinfo(access_token)["sub"], None

    def user_info(self, access_token: str, openid: str) -> tuple[str, str | None, dict[str, Any]]:
        profile = self._userinfo(access_token)
        if profile["sub"] != openid:
            raise UpstreamProtocolError(hint="the token belongs to another user", endpoint="me")
        return str(profile.get("name") or ""), profile.get("picture"), profile

    # -- HTTP

    def _token(self, form: Mapping[str, str], *, login: bool = False) -> UpstreamTokens:
        body = self._call("POST", "/token", data=form, auth=(self.client_id, self._secret))
        if body.get("error") == "invalid_grant":
            if login:  # RFC 6749 4.1.2.1: invalid_grant is not a login-time error
                raise UpstreamRejected(
                    message_key="upstream.code_invalid", hint="the code is invalid or spent"
                )
            raise UpstreamRejected(
                oauth_error="invalid_grant",
                message_key="upstream.token_expired",
                hint="the refresh token is invalid or spent: the user must log in again",
            )
        if body.get("error") == "invalid_client":
            raise UpstreamRejected(
                message_key="upstream.misconfigured",
                hint="the upstream refused the client: check client_id and client_secret",
            )
        access, refresh = body.get("access_token"), body.get("refresh_token")
        expires_in = body.get("expires_in")
        if not isinstance(access, str) or not access or not isinstance(expires_in, int):
            raise UpstreamProtocolError(hint="the token response lacks access_token/expires_in")
        return UpstreamTokens(
            access_token=access,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_in=expires_in,
            obtained_at=int(time.time()),
        )

    def _userinfo(self, access_token: str, *, login: bool = False) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {access_token}"}
        body = self._call("GET", "/userinfo", headers=headers)
        if body.get("error") == "invalid_token":
            if login:
                raise UpstreamRejected(hint="the upstream refused the token it just issued")
            raise UpstreamRejected(
                oauth_error="invalid_grant",
                message_key="upstream.token_expired",
                hint="the access token is invalid or expired",
            )
        if not isinstance(body.get("sub"), str) or not body["sub"]:
            raise UpstreamProtocolError(hint="userinfo has no sub", endpoint="userinfo")
        return body

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        # Errors are raised outside the except blocks: a chained requests exception would
        # drag the request (headers with tokens) into tracebacks.
        failure = ""
        response = None
        try:
            response = self._http.request(
                method, self.base_url + path, timeout=self._timeout, **kwargs
            )
        except requests.RequestException as exc:
            failure = type(exc).__name__
        if response is not None and response.status_code >= 500:
            failure = f"HTTP {response.status_code}"
        if response is None or failure:
            log.warning("example upstream %s unavailable: %s", path, failure)
            raise UpstreamUnavailable(
                hint=f"the upstream is unavailable ({failure})", endpoint=path
            )
        body: Any = None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise UpstreamProtocolError(hint="the upstream did not answer JSON", endpoint=path)
        return body


def factory(options: Mapping[str, Any], context: ConnectorContext) -> ExampleConnector:
    """The ``example`` entry point: options are ``upstream.example`` from the config."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    for key in ("base_url", "client_id", "client_secret"):
        if not isinstance(options.get(key), str) or not options[key]:
            raise ValueError(f"{key} is required (a non-empty string)")
    base_url = options["base_url"]
    if urlsplit(base_url).scheme not in ("http", "https"):
        raise ValueError("base_url must be an http(s) URL")
    if not context.development and not base_url.startswith("https://"):
        raise ValueError("base_url must be https:// for a production issuer")
    timeout = options.get("timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    return ExampleConnector(
        base_url=base_url,
        client_id=options["client_id"],
        client_secret=options["client_secret"],
        scope=str(options.get("scope", "profile")),
        timeout=float(timeout),
    )
