"""OpenID Connect Back-Channel Logout 1.0: logout tokens and their delivery to relying parties.

Hand-written on purpose: Authlib (1.9) implements RP-initiated logout but has nothing for
the back channel, so this module follows the specification directly —
https://openid.net/specs/openid-connect-backchannel-1_0.html — §2.4 (the Logout Token)
and §2.5 (sending it).

Why it is built this way:

* **Never in the user's way.** :meth:`BackchannelLogout.notify` only queues work on a
  thread pool owned by the instance and returns the futures at once; a slow or dead
  relying party must not delay the browser's logout response.
* **Bounded.** Each attempt has a timeout, attempts are capped, backoff is short and
  exponential, so a delivery ends within ``timeout × attempts + backoffs`` (connect and
  each socket read are bounded by ``timeout``; the response body is never read).
* **Retry what can heal only.** Connection errors, timeouts and 5xx are retried; a 4xx
  means the relying party rejected this token, and the same token would be rejected
  again. Redirects are not followed (§2.5 gives the RP one URI, and following one would
  hand the token to whoever the RP — or an attacker on its path — points at).
* **The token never reaches a log.** It is a bearer credential for ending sessions; logs
  name the client, the URI, the attempt and the outcome only.
* **No module state.** The pool and the HTTP session belong to the instance, so tests and
  several apps in one process do not share (or leak) threads.
"""

from __future__ import annotations

import concurrent.futures
import http.cookiejar
import logging
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import requests
from joserfc import jwt
from requests.adapters import HTTPAdapter

from broker.oidc.claims import SubjectUnavailable
from broker.oidc.grants import ClientUser
from broker.oidc.models import Client, EndUser
from broker.oidc.server import ProviderContext

__all__ = [
    "BACKCHANNEL_LOGOUT_EVENT",
    "LOGOUT_TOKEN_LIFETIME",
    "LOGOUT_TOKEN_TYPE",
    "BackchannelLogout",
]

logger = logging.getLogger(__name__)

#: §2.4: the ``events`` member that marks a JWT as a logout token.
BACKCHANNEL_LOGOUT_EVENT: Final = "http://schemas.openid.net/event/backchannel-logout"
#: §2.4: explicit typing, so a logout token cannot be confused with an ID token.
LOGOUT_TOKEN_TYPE: Final = "logout+jwt"
#: Seconds a logout token stays valid; §4 recommends a short lifetime ("two minutes").
LOGOUT_TOKEN_LIFETIME: Final = 120
#: §2.8: the RP answers 200 (204 is common in practice and equally unambiguous).
_SUCCESS_STATUSES: Final = frozenset({200, 204})
#: How much longer than one attempt's timeout :meth:`BackchannelLogout.close` waits for
#: deliveries in flight before giving up on them.
_CLOSE_GRACE_SECONDS: Final = 1.0


@dataclass(frozen=True)
class _Target:
    """One delivery to make: who receives it, where, and about which session."""

    client: Client
    uri: str
    user: EndUser
    sid: str


@dataclass(frozen=True)
class _Attempt:
    """What one POST ended with: ``retry`` says whether another attempt could help."""

    delivered: bool
    retry: bool
    detail: str


class BackchannelLogout:
    """Signs logout tokens and posts them to relying parties in the background.

    One instance per app (the pool and HTTP session are its own); call :meth:`close`
    at shutdown.
    """

    def __init__(
        self,
        ctx: ProviderContext,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        backoff: float = 1.0,
        max_workers: int = 4,
    ) -> None:
        _require(timeout > 0, "timeout must be positive")
        _require(attempts >= 1, "attempts must be at least 1")
        _require(backoff >= 0, "backoff must not be negative")
        _require(max_workers >= 1, "max_workers must be at least 1")
        self._ctx = ctx
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: set[concurrent.futures.Future[bool]] = set()
        self._session = _new_session(max_workers)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="backchannel-logout"
        )

    # ------------------------------------------------------------------ the token

    def logout_token(self, client: Client, user: EndUser, sid: str) -> str:
        """The signed logout token (§2.4) for this client, user and broker session.

        ``sub`` is the subject *this* client knows the user by (pairwise, UnionID or
        OpenID), so the RP can match it; raises :class:`SubjectUnavailable` when the
        client has no subject for the user. There is never a ``nonce`` (§2.4 forbids
        it, so that a logout token cannot pass as an ID token).
        """
        signing = self._ctx.signing_key_for(client)
        header = {"alg": signing.alg, "kid": signing.kid, "typ": LOGOUT_TOKEN_TYPE}
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self._ctx.config.issuer,
            "aud": client.client_id,
            "iat": now,
            "exp": now + LOGOUT_TOKEN_LIFETIME,
            "jti": secrets.token_urlsafe(24),
            "sub": self._ctx.subject(ClientUser(user, client)),
            "sid": sid,
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        }
        return jwt.encode(header, claims, signing.key, algorithms=[signing.alg])

    # ------------------------------------------------------------------ delivery

    def notify(
        self, user: EndUser, sid: str, client_ids: Iterable[str]
    ) -> list[concurrent.futures.Future[bool]]:
        """Queue one delivery per client that registered a ``backchannel_logout_uri``.

        Returns at once; each future resolves to ``True`` when the RP acknowledged the
        logout. Clients without the URI, unknown ids, and clients that cannot name this
        user (no session there to end) are skipped, so the list may be shorter than
        ``client_ids``. After :meth:`close`, the futures are already ``False``: a
        logout racing shutdown must still complete for the user.
        """
        futures = []
        for target in self._targets(user, sid, client_ids):
            futures.append(self._submit(target))
        return futures

    def close(self) -> None:
        """Stop the pool: no new retries, queued deliveries give up, and deliveries in
        flight get one attempt's timeout (plus a grace second) to finish.

        Waits briefly rather than forever, so shutting the broker down is bounded.
        """
        self._closing.set()
        self._pool.shutdown(wait=False)
        with self._lock:
            pending = set(self._in_flight)
        _, not_done = concurrent.futures.wait(pending, timeout=self._timeout + _CLOSE_GRACE_SECONDS)
        if not_done:
            logger.warning(
                "back-channel logout: %d delivery(ies) still running at shutdown", len(not_done)
            )
            return  # the session is still in use; closing it under a request helps nobody
        self._session.close()

    def _targets(self, user: EndUser, sid: str, client_ids: Iterable[str]) -> list[_Target]:
        """The clients to notify, each once, in the order given."""
        targets = []
        for client_id in dict.fromkeys(client_ids):
            client = self._ctx.clients.get(client_id)
            if client is None:
                logger.warning("back-channel logout: unknown client %r skipped", client_id)
                continue
            uri = client.config.backchannel_logout_uri
            if uri is None:
                logger.debug("back-channel logout: %s has no backchannel_logout_uri", client_id)
                continue
            if not self._ctx.can_name(ClientUser(user, client)):
                logger.info(
                    "back-channel logout: %s has no subject for this user; skipped", client_id
                )
                continue
            targets.append(_Target(client, uri, user, sid))
        return targets

    def _submit(self, target: _Target) -> concurrent.futures.Future[bool]:
        """Hand one delivery to the pool, tracking it so :meth:`close` can wait for it."""
        if self._closing.is_set():
            return _shutting_down(target)
        try:
            future = self._pool.submit(self._deliver, target)
        except RuntimeError:  # the pool shut down between the check and the submit
            return _shutting_down(target)
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future[bool]) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def _deliver(self, target: _Target) -> bool:
        """Runs on the pool. Never raises: a background failure is logged, not lost."""
        client_id = target.client.client_id
        if self._closing.is_set():
            logger.warning(
                "back-channel logout to %s (%s) not sent: shutting down", client_id, target.uri
            )
            return False
        try:
            token = self.logout_token(target.client, target.user, target.sid)
            return self._post_with_retries(target, token)
        except SubjectUnavailable:
            logger.info("back-channel logout: %s has no subject for this user", client_id)
            return False
        except Exception:
            logger.exception("back-channel logout to %s (%s) failed", client_id, target.uri)
            return False

    def _post_with_retries(self, target: _Target, token: str) -> bool:
        """Up to ``attempts`` POSTs of the same token, backing off between them."""
        client_id = target.client.client_id
        for attempt in range(1, self._attempts + 1):
            outcome = self._post(target.uri, token)
            if outcome.delivered:
                logger.info(
                    "back-channel logout delivered to %s (%s): %s, attempt %d",
                    client_id,
                    target.uri,
                    outcome.detail,
                    attempt,
                )
                return True
            last = attempt == self._attempts
            if not outcome.retry or last or self._pause_before(attempt + 1):
                logger.warning(
                    "back-channel logout to %s (%s) failed: %s, attempt %d of %d, giving up",
                    client_id,
                    target.uri,
                    outcome.detail,
                    attempt,
                    self._attempts,
                )
                return False
            logger.info(
                "back-channel logout to %s (%s): %s, attempt %d of %d, retrying",
                client_id,
                target.uri,
                outcome.detail,
                attempt,
                self._attempts,
            )
        return False  # not reached: the loop returns on its last attempt

    def _pause_before(self, attempt: int) -> bool:
        """Sleep the backoff before ``attempt`` (2 → backoff, 3 → 2×backoff, ...).

        Returns ``True`` when :meth:`close` interrupted the pause: stop retrying.
        """
        delay = self._backoff * 2 ** (attempt - 2)
        return self._closing.wait(delay)

    def _post(self, uri: str, token: str) -> _Attempt:
        """One §2.5 request: form-encoded ``logout_token``, no redirects, bounded time.

        The body is streamed and never read: the RP's answer is its status code, and
        an unread body cannot hold the worker or fill memory.
        """
        try:
            response = self._session.post(
                uri,
                data={"logout_token": token},
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            return _Attempt(delivered=False, retry=True, detail=_describe(exc))
        except requests.RequestException as exc:
            return _Attempt(delivered=False, retry=False, detail=_describe(exc))
        with response:
            status = response.status_code
        detail = f"HTTP {status}"
        if status in _SUCCESS_STATUSES:
            return _Attempt(delivered=True, retry=False, detail=detail)
        return _Attempt(delivered=False, retry=status >= 500, detail=detail)


def _new_session(max_workers: int) -> requests.Session:
    """A session shared by the workers: pooled connections, no retries of its own (the
    retry policy is ours), and no cookies (one RP must not be able to plant a cookie
    that the broker would then send to another RP on the same host)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=max_workers, pool_maxsize=max_workers, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return session


def _shutting_down(target: _Target) -> concurrent.futures.Future[bool]:
    """An already-failed future, for deliveries asked for after :meth:`close`."""
    logger.warning(
        "back-channel logout to %s (%s) not sent: shutting down",
        target.client.client_id,
        target.uri,
    )
    future: concurrent.futures.Future[bool] = concurrent.futures.Future()
    future.set_result(False)
    return future


def _describe(exc: requests.RequestException) -> str:
    """The exception as a log line. requests' messages carry the URL, never the body,
    so the token cannot leak through them."""
    return f"{type(exc).__name__}: {exc}"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
