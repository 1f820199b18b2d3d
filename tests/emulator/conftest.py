"""Fixtures for the QQ emulator tests: a real HTTP emulator per test and a thin client.

Every test gets a fresh emulator (fresh state) served by waitress on 127.0.0.1, and talks
to it with ``requests`` exactly as the connector will.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from broker.emulator import EmulatorSettings, create_emulator_app
from tests.servers import serve

APP_ID = "101364207"
APP_KEY = "6b1a0e4c2f9d8e7a5b3c1d0f9e8a7b6c"
CALLBACK = "http://127.0.0.1:8000/qq/callback"
TIMEOUT = 10


def expected_openid(app_id: str, user_id: str) -> str:
    """The documented formula, computed independently of the emulator's code."""
    return hmac.new(app_id.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32].upper()


def expected_unionid(developer_id: str, user_id: str) -> str:
    digest = hmac.new(developer_id.encode(), user_id.encode(), hashlib.sha256).hexdigest()
    return "UID_" + digest[:32].upper()


@dataclass
class Emulator:
    """A running emulator and helpers that speak QQ to it."""

    url: str
    settings: EmulatorSettings

    def get(self, path: str, params: dict[str, str] | None = None) -> requests.Response:
        return requests.get(self.url + path, params=params, allow_redirects=False, timeout=TIMEOUT)

    def post(self, path: str, data: dict[str, str]) -> requests.Response:
        return requests.post(self.url + path, data=data, allow_redirects=False, timeout=TIMEOUT)

    def control(self, **update: Any) -> dict[str, Any]:
        response = requests.post(self.url + "/_emulator/control", json=update, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def requests_log(self) -> list[dict[str, Any]]:
        return list(requests.get(self.url + "/_emulator/requests", timeout=TIMEOUT).json())

    def authorize_params(self, **overrides: str) -> dict[str, str]:
        params = {
            "response_type": "code",
            "client_id": self.settings.app_id,
            "redirect_uri": CALLBACK,
            "state": "st-1",
        }
        params.update(overrides)
        return params

    def login(self, user: str = "zhangsan", **overrides: str) -> str:
        """Submit the login form for ``user`` and return the code from the callback."""
        data = self.authorize_params(**overrides)
        data["user"] = user
        response = self.post("/oauth2.0/authorize", data)
        assert response.status_code == 302, response.text
        return query_of(response.headers["Location"])["code"]

    def token_params(self, code: str, **overrides: str) -> dict[str, str]:
        params = {
            "grant_type": "authorization_code",
            "client_id": self.settings.app_id,
            "client_secret": self.settings.app_key,
            "code": code,
            "redirect_uri": CALLBACK,
        }
        params.update(overrides)
        return params

    def tokens(self, user: str = "zhangsan") -> dict[str, Any]:
        """Log ``user`` in and exchange the code (fmt=json); returns the token object."""
        response = self.post("/oauth2.0/token", self.token_params(self.login(user), fmt="json"))
        return dict(json.loads(response.text))

    def refresh_params(self, refresh_token: str, **overrides: str) -> dict[str, str]:
        params = {
            "grant_type": "refresh_token",
            "client_id": self.settings.app_id,
            "client_secret": self.settings.app_key,
            "refresh_token": refresh_token,
        }
        params.update(overrides)
        return params


def query_of(url: str) -> dict[str, str]:
    """Single-valued query parameters of ``url``."""
    return {
        key: values[0]
        for key, values in parse_qs(urlsplit(url).query, keep_blank_values=True).items()
    }


MakeEmulator = Callable[..., Emulator]


@pytest.fixture
def make_emulator() -> Iterator[MakeEmulator]:
    """Factory: ``make_emulator(**settings_overrides)`` serves a fresh emulator."""
    served = []

    def factory(**overrides: Any) -> Emulator:
        settings = EmulatorSettings(
            app_id=overrides.pop("app_id", APP_ID),
            app_key=overrides.pop("app_key", APP_KEY),
            callbacks=overrides.pop("callbacks", [CALLBACK]),
            **overrides,
        )
        server = serve(create_emulator_app(settings))
        served.append(server)
        return Emulator(server.url, settings)

    yield factory
    for server in served:
        server.stop()


@pytest.fixture
def emu(make_emulator: MakeEmulator) -> Emulator:
    """An emulator with the default settings and users."""
    return make_emulator()


@dataclass
class Form:
    action: str
    method: str
    hidden: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str, str]] = field(default_factory=list)  # name, value, text


class FormParser(HTMLParser):
    """Collects forms, hidden inputs, submit buttons and script tags from a page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.scripts = 0
        self._button: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {name: value or "" for name, value in attrs}
        if tag == "script":
            self.scripts += 1
        elif tag == "form":
            self.forms.append(Form(attr.get("action", ""), attr.get("method", "get").lower()))
        elif tag == "input" and attr.get("type") == "hidden":
            self.forms[-1].hidden[attr["name"]] = attr.get("value", "")
        elif tag == "button":
            self._button = [attr.get("name", ""), attr.get("value", ""), ""]

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button[2] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None:
            name, value, text = self._button
            self.forms[-1].buttons.append((name, value, " ".join(text.split())))
            self._button = None


def parse_page(html: str) -> FormParser:
    parser = FormParser()
    parser.feed(html)
    return parser
