"""Keep secrets out of third-party DEBUG logs (security-checklist SC-02).

The broker never logs tokens itself, but two libraries do at DEBUG: Authlib
prints every issued token, and urllib3 prints request lines whose query holds
QQ's access token (QQ's /me and get_user_info take it only in the URL). These
filters drop or redact such records wherever logging is configured.
"""

from __future__ import annotations

import logging
import re

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
