"""Client authentication beyond Authlib's defaults: ``private_key_jwt`` (OIDC Core §9).

The client proves who it is with a JWT it signs with its own private key (RFC 7523 §2.2,
§3); the broker checks it against the public keys the client registered, either by value
(``jwks``) or by reference (``jwks_uri``). Nothing secret is shared, which is why this
method exists; every check below keeps it that way:

* only asymmetric algorithms, so a public key can never double as an HMAC secret;
* ``iss`` = ``sub`` = the client, ``aud`` = this token endpoint or the issuer, ``exp``
  required, ``jti`` remembered in the shared store so an assertion is single use;
* a ``jwks_uri`` is fetched with a deadline and a size cap, cached per client, and
  refetched (rate-limited) when an assertion names a ``kid`` the cache does not know.

Authlib's ``JWTBearerClientAssertion`` runs the protocol; this module supplies keys,
audiences, replay memory and safe error messages (shared/authlib-notes.md, pitfalls 7, 9).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import requests
from authlib.oauth2.rfc6749 import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from broker.config import ClientConfig
from broker.oidc.models import Client
from broker.storage.base import Store, digest

if TYPE_CHECKING:
    from broker.oidc.server import BrokerAuthorizationServer

__all__ = [
    "ASSERTION_ALGORITHMS",
    "ClientKeySets",
    "JwksError",
    "PrivateKeyJWT",
    "fetch_jwks",
    "import_public_key_set",
    "register_client_auth",
]

logger = logging.getLogger(__name__)

METHOD: Final = "private_key_jwt"
#: Asymmetric only: with HS256 the client's *public* key would become the shared secret,
#: and ``none`` is no signature at all (RFC 8725 §3.1, §3.2).
ASSERTION_ALGORITHMS: Final = ("RS256", "PS256", "ES256", "EdDSA")
#: Endpoints that accept client assertions, as audiences (besides the issuer itself).
ASSERTION_PATHS: Final = ("/token", "/revoke", "/introspect")
#: RFC 7523 §3 item 4 allows "a few minutes" of clock skew.
ASSERTION_LEEWAY: Final = 60
#: The jti must be remembered until the assertion expires; a bound on ``exp`` keeps that
#: memory bounded. One hour is what common client libraries use at most.
MAX_ASSERTION_LIFETIME: Final = 3600

JWKS_FETCH_TIMEOUT: Final = 5.0
JWKS_MAX_BYTES: Final = 64 * 1024
JWKS_CACHE_SECONDS: Final = 300.0
#: An unknown ``kid`` forces a refetch at most this often per client, so that assertions
#: with made-up kids cannot turn the broker into a fetch loop against the client's host.
JWKS_REFETCH_INTERVAL: Final = 10.0
#: After a failed fetch, fail fast for this long instead of tying up a thread per request.
JWKS_FAILURE_BACKOFF: Final = 5.0

_ASYMMETRIC_KTY: Final = frozenset({"RSA", "EC", "OKP"})
_PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})
_ERROR_CHARS: Final = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}


class JwksError(Exception):
    """The client's public keys cannot be had (absent, unreachable, too big, malformed)."""


# --------------------------------------------------------------------------- key sets


def import_public_key_set(document: Any) -> KeySet:
    """Import a JWK Set, keeping only asymmetric public keys.

    Symmetric (``oct``) keys could only serve HS* algorithms, which are refused; a key with
    private members is published for all to see, so anyone could sign with it.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWK Set (an object with a 'keys' list)")
    usable = [
        dict(key)
        for key in document["keys"]
        if isinstance(key, Mapping)
        and key.get("kty") in _ASYMMETRIC_KTY
        and not _PRIVATE_JWK_MEMBERS & set(key)
    ]
    if not usable:
        raise JwksError("the JWK Set holds no usable public signing key")
    try:
        return KeySet.import_key_set({"keys": usable})
    except (JoseError, ValueError, TypeError, KeyError) as error:
        raise JwksError(f"the JWK Set cannot be imported ({type(error).__name__})") from error


def fetch_jwks(
    uri: str, timeout: float = JWKS_FETCH_TIMEOUT, max_bytes: int = JWKS_MAX_BYTES
) -> Any:
    """GET a client's ``jwks_uri`` and return the parsed JSON.

    The deadline covers the whole body, not each read: a server that trickles one byte at a
    time would otherwise hold a broker thread for ever. Worst case is ``timeout`` plus one
    read timeout. Redirects are refused: the registered URI is the one that is trusted.
    """
    deadline = time.monotonic() + timeout
    try:
        with requests.get(
            uri,
            timeout=timeout,
            stream=True,
            allow_redirects=False,
            headers={"Accept": "application/json", "Accept-Encoding": "identity"},
        ) as response:
            if response.status_code != 200:
                raise JwksError(f"HTTP {response.status_code}")
            body = _read_capped(response, deadline, max_bytes)
    except requests.RequestException as error:
        raise JwksError(type(error).__name__) from error
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # RecursionError: "[[[[..." within the cap
        raise JwksError("not JSON") from error


def _read_capped(response: requests.Response, deadline: float, max_bytes: int) -> bytes:
    body = bytearray()
    for chunk in response.iter_content(chunk_size=8192):
        body += chunk
        if len(body) > max_bytes:
            raise JwksError(f"larger than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise JwksError("too slow")
    return bytes(body)


def _has_kid(keys: KeySet, kid: str | None) -> bool:
    if kid is None:
        # joserfc picks the only key when the header names none (OIDC Core §10.1).
        return len(keys.keys) == 1
    return any(key.kid == kid for key in keys.keys)


@dataclass
class _Cached:
    """One client's ``jwks_uri`` state."""

    keys: KeySet | None = None
    fresh_until: float = -math.inf
    forced_at: float = -math.inf
    retry_at: float = -math.inf
    lock: threading.Lock = field(default_factory=threading.Lock)


class ClientKeySets:
    """Clients' public keys: by value once imported, by reference cached for a while.

    One instance per authorization server (made in :func:`register_client_auth`), so
    nothing leaks between apps or tests. ``fetch`` and ``clock`` are seams for tests.
    """

    def __init__(
        self,
        fetch: Callable[[str], Any] = fetch_jwks,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = JWKS_CACHE_SECONDS,
        refetch_interval: float = JWKS_REFETCH_INTERVAL,
        failure_backoff: float = JWKS_FAILURE_BACKOFF,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._ttl = ttl
        self._refetch_interval = refetch_interval
        self._failure_backoff = failure_backoff
        self._by_value: dict[str, KeySet] = {}
        self._by_uri: dict[str, _Cached] = {}
        self._guard = threading.Lock()

    def get(self, client: ClientConfig, kid: str | None) -> KeySet:
        """The key set to verify an assertion naming ``kid`` (``None``: no kid)."""
        if client.jwks is not None:
            return self._value_keys(client.client_id, client.jwks)
        if client.jwks_uri is None:
            raise JwksError("the client registered no jwks or jwks_uri")
        return self._uri_keys(client.client_id, client.jwks_uri, kid)

    def _value_keys(self, client_id: str, jwks: Mapping[str, Any]) -> KeySet:
        # Imported once: the config is immutable, and importing costs per request otherwise.
        keys = self._by_value.get(client_id)
        if keys is None:
            keys = self._by_value[client_id] = import_public_key_set(jwks)
        return keys

    def _entry(self, client_id: str) -> _Cached:
        with self._guard:
            entry = self._by_uri.get(client_id)
            if entry is None:
                entry = self._by_uri[client_id] = _Cached()
            return entry

    def _uri_keys(self, client_id: str, uri: str, kid: str | None) -> KeySet:
        entry = self._entry(client_id)
        # One fetch per client at a time; other clients are not held up by a slow host.
        with entry.lock:
            now = self._clock()
            if entry.keys is not None and now < entry.fresh_until:
                if _has_kid(entry.keys, kid) or now - entry.forced_at < self._refetch_interval:
                    return entry.keys
                entry.forced_at = now  # an unknown kid: the client may have rotated its keys
            elif now < entry.retry_at:
                raise JwksError("the jwks_uri failed moments ago")
            return self._refresh(entry, client_id, uri, now)

    def _refresh(self, entry: _Cached, client_id: str, uri: str, now: float) -> KeySet:
        try:
            keys = import_public_key_set(self._fetch(uri))
        except JwksError as error:
            entry.retry_at = now + self._failure_backoff
            logger.warning("private_key_jwt: jwks_uri of %s unusable: %s", client_id, error)
            raise
        entry.keys, entry.fresh_until = keys, now + self._ttl
        return keys


# --------------------------------------------------------------------------- the method


def _safe(description: str) -> str:
    """RFC 6749 §5.2 restricts error_description's characters; Authlib raises (a 500) on
    others, and descriptions can echo attacker input such as a ``kid``."""
    return "".join(c if c in _ERROR_CHARS else "?" for c in description)[:200]


def _unauthorized(description: str) -> InvalidClientError:
    # RFC 6749 §5.2: invalid_client; 401 like the broker's other failed authentications.
    return InvalidClientError(status_code=401, description=_safe(description))


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """OIDC Core §9 ``private_key_jwt`` on Authlib's RFC 7523 client assertion."""

    CLIENT_AUTH_METHOD = METHOD

    def __init__(self, issuer: str, store: Store, key_sets: ClientKeySets) -> None:
        super().__init__(validate_jti=True, leeway=ASSERTION_LEEWAY)
        self.issuer = issuer
        self.store = store
        self.key_sets = key_sets

    def __call__(self, query_client: Callable[[str], Client | None], request: Any) -> Any:
        """Authenticate, turning every failure into a 401 with a safe description."""
        try:
            client = super().__call__(query_client, request)
        except InvalidClientError as error:
            raise _unauthorized(error.description or "Invalid client assertion.") from error
        form_client_id = request.form.get("client_id")
        if client is not None and form_client_id and form_client_id != client.client_id:
            # RFC 7521 §4.2: a client_id sent alongside must name the assertion's subject.
            raise _unauthorized("client_id does not match the assertion's subject.")
        return client

    def get_audiences(self) -> list[str]:
        """RFC 7523 §3 item 3 / OIDC Core §9: the token endpoint URL; the issuer is accepted
        too, as RFC 7523 allows any value identifying the authorization server, and so is
        the URL of the endpoint being called (/revoke, /introspect: what client libraries
        put there)."""
        return [f"{self.issuer}{path}" for path in ASSERTION_PATHS] + [self.issuer]

    def resolve_client_public_key(self, client: Client) -> Callable[[Any], KeySet]:
        """A resolver joserfc calls with the parsed JWS, so the ``kid`` can steer the cache.

        The method is checked first: a secret-based client gets no key lookup (and no fetch).
        """
        if not client.check_endpoint_auth_method(METHOD, "token"):
            raise _unauthorized(f"The client cannot authenticate with method: {METHOD}")

        def resolve(token: Any) -> KeySet:
            kid = token.headers().get("kid")
            return self.key_sets.get(client.config, kid if isinstance(kid, str) else None)

        return resolve

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        """Verify the signature with asymmetric algorithms only, then the claims.

        Authlib's version lets joserfc use its default algorithms and echoes joserfc's
        messages (which may quote the ``kid``); this one does neither.
        """
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(ASSERTION_ALGORITHMS))
        except JwksError as error:
            raise _unauthorized(f"The client's keys are unavailable: {error}") from error
        except (JoseError, ValueError, TypeError) as error:  # TypeError: e.g. "crit": 5
            code = getattr(error, "error", "invalid_assertion")
            raise _unauthorized(f"Invalid client assertion ({code}).") from error
        self.verify_claims(token.claims)
        claims: dict[str, Any] = token.claims
        return claims

    def validate_jti(self, claims: Mapping[str, Any], jti: Any) -> bool:
        """RFC 7523 §3 item 7: single use, remembered in the shared store until the assertion
        could no longer be accepted anyway (``exp`` plus leeway)."""
        if not isinstance(jti, str) or not jti:
            raise _unauthorized("Invalid claim: 'jti'")
        now = int(time.time())
        exp = claims["exp"]  # already checked to be a finite number in the future
        if exp - now > MAX_ASSERTION_LIFETIME + self.leeway:
            raise _unauthorized("The assertion's exp is too far in the future.")
        keep_until = math.ceil(exp) + self.leeway
        return self.store.remember_jti(digest(f"{claims['sub']}:{jti}"), keep_until, now)


def register_client_auth(server: BrokerAuthorizationServer) -> None:
    """Register ``private_key_jwt`` on ``server``.

    Grants and endpoints still choose which methods they accept: each must list
    ``private_key_jwt`` in its ``TOKEN_ENDPOINT_AUTH_METHODS``.
    """
    method = PrivateKeyJWT(server.ctx.config.issuer, server.ctx.store, ClientKeySets())
    server.register_client_auth_method(METHOD, method)
