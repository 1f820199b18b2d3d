"""The contract kit's adapter for the example connector: what its author writes once.

It starts the example upstream on 127.0.0.1 with the kit's callback URL registered, and
plays the browser by naming the user at the upstream's ``/control`` and following the
redirects from the authorize URL to the callback.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import requests

from broker.connectors.contract import (
    ContractAdapter,
    UpstreamUnderTest,
    follow_to_callback,
    unused_local_url,
)
from tests.example_connector.emulator import create_example_upstream
from tests.servers import ServedApp, serve

CLIENT_ID = "broker-example"


class ExampleAdapter(ContractAdapter):
    name = "example"
    users = ("alice", "bob")
    single_use_refresh_tokens = True
    supports_unionid = False

    def __init__(self) -> None:
        self.client_secret = secrets.token_urlsafe(24)
        self.served: ServedApp | None = None
        self.browser = requests.Session()

    @property
    def url(self) -> str:
        assert self.served is not None, "the upstream is not started"
        return self.served.url

    def start(self, callback_url: str) -> UpstreamUnderTest:
        app = create_example_upstream(
            client_id=CLIENT_ID, client_secret=self.client_secret, redirect_uris=[callback_url]
        )
        self.served = serve(app)
        options = {
            "base_url": self.url,
            "client_id": CLIENT_ID,
            "client_secret": self.client_secret,
        }
        return UpstreamUnderTest(options=options, secrets=(self.client_secret,))

    def stop(self) -> None:
        self.browser.close()
        if self.served is not None:
            self.served.stop()

    def act_as(self, user: str | None) -> None:
        """Who the upstream logs in next (None: the user cancels)."""
        requests.post(f"{self.url}/control", json={"user": user}, timeout=5).raise_for_status()

    def login(self, authorization_url: str, user: str, callback_url: str) -> str:
        self.act_as(user)
        return follow_to_callback(self.browser, authorization_url, callback_url)

    def cancel(self, authorization_url: str, callback_url: str) -> str | None:
        self.act_as(None)
        return follow_to_callback(self.browser, authorization_url, callback_url)

    def unreachable_options(self, options: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return {**options, "base_url": unused_local_url()}
