"""The login-binding cookie's attributes in production and development (checklist SS-03)."""

from __future__ import annotations

from pathlib import Path

from broker.app import create_app
from broker.config import parse_config


def production_app(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = parse_config(
        {
            "issuer": "https://login.example.test",
            "upstream": {"qq": {"app_id": "101000001", "app_key": "k" * 32}},
            "clients": [
                {
                    "client_id": "rp",
                    "client_secret": "s" * 40,
                    "redirect_uris": ["https://rp.example.test/cb"],
                }
            ],
        },
        base_dir=tmp_path,
    )
    return create_app(config)


def test_production_cookie_is_host_prefixed_secure_httponly_lax(tmp_path: Path) -> None:
    client = production_app(tmp_path).test_client()
    response = client.get(
        "/authorize",
        base_url="https://login.example.test",
        query_string={
            "response_type": "code",
            "client_id": "rp",
            "redirect_uri": "https://rp.example.test/cb",
            "scope": "openid",
            "state": "s",
        },
    )
    assert response.status_code == 302
    assert response.headers["Location"].startswith("https://graph.qq.com/oauth2.0/authorize?")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-qqb_browser=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in cookie
    assert "Domain" not in cookie and "Max-Age" not in cookie
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
