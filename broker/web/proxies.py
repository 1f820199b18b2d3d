"""``server.trusted_proxies``: the client address behind a reverse proxy.

Behind a proxy every TCP peer is the proxy, so per-IP rate limits would count all users
as one. The proxy names the client in X-Forwarded-For, but anyone can send that header,
so it is believed only when the peer is one of the configured proxies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["PROXY_ADDR_KEY", "trust_forwarded_for"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Where the middleware keeps the TCP peer (the proxy) when it replaces REMOTE_ADDR.
PROXY_ADDR_KEY = "broker.proxy_addr"


def trust_forwarded_for(wsgi_app: WSGIApp, networks: Sequence[str]) -> WSGIApp:
    """Set REMOTE_ADDR to the client a trusted proxy names in X-Forwarded-For.

    ``networks`` are CIDR strings (``server.trusted_proxies``); empty returns ``wsgi_app``
    itself. When the TCP peer is inside one of them, X-Forwarded-For is read from the right,
    past every address that is itself a trusted proxy, and the first untrusted address
    becomes REMOTE_ADDR; the peer is kept in ``environ["broker.proxy_addr"]``. If all are
    trusted, the leftmost is the client. A malformed entry stops the walk at the last good
    address: whoever wrote it is not a proxy we know. From any other peer the header is
    ignored, so a client cannot choose its own address (and so its rate-limit counter).

    Only the address: scheme, host and path still come from the configured issuer, never
    from X-Forwarded-Proto/-Host (see ``broker.app._mount_at_issuer``).
    """
    if not networks:
        return wsgi_app
    trusted = tuple(ipaddress.ip_network(network) for network in networks)

    def is_trusted(address: Address) -> bool:
        return any(address in network for network in trusted)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        peer = _parse(environ.get("REMOTE_ADDR", ""))
        if peer is not None and is_trusted(peer):
            client = _client(peer, environ.get("HTTP_X_FORWARDED_FOR", ""), is_trusted)
            if client != peer:
                environ[PROXY_ADDR_KEY] = environ["REMOTE_ADDR"]
                environ["REMOTE_ADDR"] = str(client)
        return wsgi_app(environ, start_response)

    return app


def _client(peer: Address, header: str, is_trusted: Callable[[Address], bool]) -> Address:
    """The rightmost address in ``header`` that is not a trusted proxy.

    Several X-Forwarded-For headers reach WSGI joined with commas: one list either way.
    """
    # Order as in RFC 7239 §5.2 (for Forwarded; X-Forwarded-For has no RFC): the client
    # first, then each proxy that passed the request on; the last proxy is the TCP peer.
    # Only the entries our own proxies appended can be believed, and the leftmost are
    # whatever the client sent, so walk from the right past the trusted ones (MDN,
    # X-Forwarded-For, "Selecting an IP address": the rightmost untrusted address).
    client = peer
    for entry in reversed(header.split(",")):
        address = _parse(entry)
        if address is None:
            return client
        client = address
        if not is_trusted(address):
            return client
    return client


def _parse(entry: str) -> Address | None:
    """One X-Forwarded-For entry: ``192.0.2.1``, ``2001:db8::1``, or the same with a port
    (``192.0.2.1:4711``, ``[2001:db8::1]:4711``) as some proxies write it. None for anything
    else, including ``unknown`` and obfuscated identifiers (RFC 7239 §6.2, §6.3), which name no
    address to count."""
    text = entry.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return address
