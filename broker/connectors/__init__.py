"""Pluggable upstream identity providers (DESIGN.md: web -> oidc -> connectors/storage).

Callers import the interface and error types from here; only :mod:`broker.connectors.qq`
knows how QQ Connect talks.
"""

from broker.connectors.base import (
    Connector,
    Identity,
    UpstreamCancelled,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTokens,
    UpstreamUnavailable,
)
from broker.connectors.qq import QQConnector

__all__ = [
    "Connector",
    "Identity",
    "QQConnector",
    "UpstreamCancelled",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRejected",
    "UpstreamTokens",
    "UpstreamUnavailable",
]
