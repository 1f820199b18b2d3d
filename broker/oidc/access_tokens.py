"""Access token values: opaque by default, RFC 9068 JWTs for clients that ask for them.

A client's ``access_token_format`` picks the format (DESIGN.md, client options):

* ``opaque`` (default): 256 random bits. Only the broker can read it, so resource
  servers must call ``/userinfo`` or introspection; nothing about the user leaks.
* ``jwt``: an RFC 9068 access token that a resource server can verify offline against
  ``/jwks.json``.

Either way the token *value* is what :class:`~broker.oidc.server.BrokerAuthorizationServer`
stores, as ``digest(access_token)``; the broker itself never trusts what a JWT says, it
looks the token up by digest like an opaque one. That keeps ``/userinfo``, revocation
and introspection format-blind: a revoked JWT stops working at the broker at once (a
resource server validating offline sees it until ``exp``, as RFC 9068 §5 accepts), and
a JWT whose payload was altered has another digest and is simply unknown.

Why the broker signs these itself instead of using Authlib's
``rfc9068.JWTBearerTokenGenerator`` (checked on Authlib 1.9.10 / joserfc 1.8.0):

1. It calls ``joserfc.jwt.encode`` without ``algorithms``, so joserfc refuses EdDSA as
   "not recommended": an EdDSA client would get a 500 at ``/token``
   (shared/authlib-notes.md pitfall 12). Only ``access_token_generator`` signs, so the
   fix means overriding the one method that does all the work.
2. Its ``alg`` is fixed per instance and it is a whole token generator, registered per
   grant type; the format and algorithm here are per client, so something has to
   dispatch on the client inside the one registered ``BearerTokenGenerator`` anyway.
3. Its ``sub`` is ``user.get_user_id()``, the QQ OpenID, not the subject this client
   sees: a ``pairwise`` or ``unionid`` client would receive the OpenID (OIDC Core §8).
4. Its ``jti`` is ``generate_token(16)``: 16 characters of a 62-letter alphabet, about
   95 bits, short of the 128 the broker uses for every random identifier.
5. It writes ``kid`` only when ``get_jwks()`` returns a ``KeySet``.

What is left once those are fixed is assembling nine claims; joserfc still does all the
JOSE work, with the ready key object from the key ring (never re-imported per token).
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any, Final

from joserfc import jwt

if TYPE_CHECKING:
    from broker.oidc.grants import ClientUser
    from broker.oidc.models import Client
    from broker.oidc.server import ProviderContext

#: RFC 9068 §2.1: the ``typ`` header that tells an access token from an ID token.
JWT_ACCESS_TOKEN_TYPE: Final = "at+jwt"
#: 256 bits, as before this module existed; the store's digest relies on high entropy.
OPAQUE_TOKEN_BYTES: Final = 32
#: RFC 9068 §2.2 / RFC 7519 §4.1.7: ``jti`` must not collide; 128 random bits.
JTI_BYTES: Final = 16


class AccessTokenFactory:
    """Authlib's ``access_token_generator``, choosing the format per client.

    ``BearerTokenGenerator.generate`` calls it with keywords
    ``(client=, grant_type=, user=, scope=)``; ``scope`` is already narrowed to what
    the client may have, and ``user`` is the :class:`ClientUser` the grant authenticated.
    """

    def __init__(self, ctx: ProviderContext) -> None:
        self.ctx = ctx

    def __call__(self, client: Client, grant_type: str, user: ClientUser, scope: str) -> str:
        if client.config.access_token_format == "jwt":
            return self.jwt_access_token(client, user, scope)
        return secrets.token_urlsafe(OPAQUE_TOKEN_BYTES)

    def jwt_access_token(self, client: Client, user: ClientUser, scope: str) -> str:
        """Sign an RFC 9068 access token with the active key for the client's algorithm.

        RFC 9068 §4 lets the authorization server choose; following the ID token
        algorithm means an RP that verifies its ID tokens can verify these too.
        """
        key = self.ctx.signing_key_for(client)
        # RFC 9068 §2.1: typ "at+jwt" keeps the token from passing as an ID token;
        # kid lets resource servers pick the key from /jwks.json across rotations.
        header = {"alg": key.alg, "kid": key.kid, "typ": JWT_ACCESS_TOKEN_TYPE}
        claims = self.jwt_claims(client, user, scope, now=int(time.time()))
        # algorithms=[alg]: without it joserfc refuses EdDSA (see the module docstring).
        return jwt.encode(header, claims, key.key, algorithms=[key.alg])

    def jwt_claims(self, client: Client, user: ClientUser, scope: str, now: int) -> dict[str, Any]:
        """RFC 9068 §2.2 claims for a token issued to ``client`` for ``user`` at ``now``.

        ``aud`` is the client itself: §3 says that without a ``resource`` parameter
        (RFC 8707, which the broker does not take) the server picks a default resource
        indicator, and the broker's only resource server besides itself is the client.
        ``sub`` is the subject this client sees (openid, unionid or pairwise), so the
        access token never reveals more than the ID token does (§2.2, OIDC Core §8).
        """
        claims: dict[str, Any] = {
            "iss": self.ctx.config.issuer,
            "exp": now + self.ctx.config.lifetimes.access_token,
            "aud": client.client_id,
            "sub": self.ctx.subject(user),
            "client_id": client.client_id,
            "iat": now,
            "jti": secrets.token_urlsafe(JTI_BYTES),
            "scope": scope,  # §2.2.3: the granted scopes, space-delimited
        }
        # §2.2.1: auth_time is the QQ login time, carried by the code or refresh token
        # (a refresh does not reset it); 0 means unknown, left out rather than claimed
        # as 1970.
        if user.user.auth_time > 0:
            claims["auth_time"] = user.user.auth_time
        return claims
