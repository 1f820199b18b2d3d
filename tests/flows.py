"""Browser-side helpers: walk an authorization through broker and emulator like a user agent."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

MAX_HOPS = 8


def follow_until(browser: requests.Session, url: str, stop_prefix: str) -> requests.Response:
    """Follow redirects by hand until one points at ``stop_prefix`` (the RP) or a page is shown."""
    response = browser.get(url, allow_redirects=False, timeout=30)
    for _ in range(MAX_HOPS):
        location = response.headers.get("Location")
        if response.status_code not in (301, 302, 303) or not location:
            return response
        if location.startswith(stop_prefix):
            return response
        response = browser.get(location, allow_redirects=False, timeout=30)
    raise AssertionError("too many redirects")


def query_of(url: str) -> dict[str, str]:
    """The query of a URL as a flat dict; a repeated parameter fails the test."""
    parsed = parse_qs(urlsplit(url).query, keep_blank_values=True)
    for key, values in parsed.items():
        assert len(values) == 1, f"{key} repeated in {url}"
    return {key: values[0] for key, values in parsed.items()}


def authorize_url(issuer: str, **params: Any) -> str:
    request = requests.Request("GET", f"{issuer}/authorize", params=params).prepare()
    assert request.url
    return request.url
