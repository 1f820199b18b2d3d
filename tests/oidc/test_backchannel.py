"""Back-Channel Logout 1.0 (§2.4 logout token, §2.5 delivery) against a real receiver.

The receiver is a small Flask relying party served on 127.0.0.1. It verifies every
logout token with PyJWT against the broker's public JWKS, the way an RP would, and
answers with whatever status the test scripts; a token that fails verification gets
400, so a broken token shows up as a failed delivery.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask, redirect, request
from flask.typing import ResponseReturnValue

from broker.config import Config, parse_config
from broker.connectors.qq import QQConnector
from broker.keys import KeyRing
from broker.oidc.backchannel import BackchannelLogout
from broker.oidc.claims import pairwise_subject
from broker.oidc.models import Client, EndUser
from broker.oidc.server import ProviderContext
from broker.oidc.upstream import UpstreamSessions
from broker.storage import SQLStore
from tests.servers import free_port, serve

EVENT = "http://schemas.openid.net/event/backchannel-logout"
ISSUER = "http://127.0.0.1:8000"
OPENID = "805CFCB3AFEA40CA7CE4B6D8A8668793"
SALT = secrets.token_bytes(32)
#: How long a held receiver waits before answering anyway: long enough that a blocking
#: notify() or a missing timeout shows up as a failed assertion, short enough not to hang.
HOLD_SECONDS = 10.0
#: Generous slack for bounded-time assertions: they check that a bound exists, not speed.
MARGIN_SECONDS = 5.0


@dataclass
class Call:
    """One request the receiver got, and what verifying its logout token found."""

    client_id: str
    content_type: str
    form_keys: list[str]
    token: str
    header: dict[str, Any] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Receiver:
    """A relying party's back-channel endpoint at ``/bc/<client_id>``, scriptable per client."""

    url: str = ""
    issuer: str = ISSUER
    jwks: dict[str, Any] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    holds: dict[str, threading.Event] = field(default_factory=dict)
    redirected: list[str] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Flask:
        app = Flask("backchannel-receiver")
        app.add_url_rule("/bc/<client_id>", view_func=self._logout, methods=["POST"])
        app.add_url_rule("/elsewhere", view_func=self._elsewhere, methods=["POST", "GET"])
        return app

    def hold(self, client_id: str) -> threading.Event:
        """Make the receiver wait on the returned event before answering ``client_id``."""
        event = threading.Event()
        self.holds[client_id] = event
        return event

    def release_all(self) -> None:
        for event in self.holds.values():
            event.set()

    def calls_for(self, client_id: str) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.client_id == client_id]

    def verify(self, token: str, client_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """What an RP must check (§2.6), with PyJWT and the published JWKS only."""
        header = jwt.get_unverified_header(token)
        key = jwt.PyJWKSet.from_dict(self.jwks)[header["kid"]]
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[key.algorithm_name],
            audience=client_id,
            issuer=self.issuer,
            options={"require": ["iss", "aud", "iat", "exp", "jti", "sub", "sid", "events"]},
        )
        if header.get("typ") != "logout+jwt":
            raise ValueError(f"typ is {header.get('typ')!r}")
        if claims["events"] != {EVENT: {}}:
            raise ValueError(f"events is {claims['events']!r}")
        if "nonce" in claims:
            raise ValueError("a logout token must not carry a nonce")
        if claims["exp"] - claims["iat"] != 120:
            raise ValueError(f"lifetime is {claims['exp'] - claims['iat']}")
        return header, claims

    def _logout(self, client_id: str) -> ResponseReturnValue:
        token = request.form.get("logout_token", "")
        call = Call(client_id, request.content_type or "", list(request.form.keys()), token)
        try:
            call.header, call.claims = self.verify(token, client_id)
        except Exception as exc:  # any verification failure is this RP's 400
            call.error = f"{type(exc).__name__}: {exc}"
        with self.lock:
            self.calls.append(call)
            scripted = self.statuses.get(client_id, [])
            status = scripted.pop(0) if scripted else 200
        self.arrived.set()
        if client_id in self.holds:
            self.holds[client_id].wait(HOLD_SECONDS)
        self.answered.set()
        if call.error:
            return call.error, 400
        if status in (301, 302, 303, 307, 308):
            return redirect(f"{self.url}/elsewhere", code=status)
        return "", status

    def _elsewhere(self) -> ResponseReturnValue:
        with self.lock:
            self.redirected.append(request.method)
        return "", 200


@dataclass
class Setup:
    ctx: ProviderContext
    receiver: Receiver
    user: EndUser


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rp = Receiver()
    served = serve(rp.app())
    rp.url = served.url
    yield rp
    rp.release_all()
    served.stop()


def _client(client_id: str, uri: str | None, **options: Any) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "client_id": client_id,
        "client_secret": secrets.token_urlsafe(24),
        "redirect_uris": [f"https://{client_id}.example/cb"],
        **options,
    }
    if uri is not None:
        definition["backchannel_logout_uri"] = uri
    return definition


def _upstream(config: Config, store: SQLStore) -> UpstreamSessions:
    """Required by ProviderContext, never called here: back-channel logout talks to RPs only."""
    qq = config.upstream.qq
    connector = QQConnector(app_id=qq.app_id, app_key=qq.app_key, base_url=qq.base_url)
    return UpstreamSessions(config, store, connector, secrets.token_bytes(32))


@pytest.fixture
def setup(tmp_path: Path, receiver: Receiver) -> Iterator[Setup]:
    bc = f"{receiver.url}/bc"
    data = {
        "issuer": ISSUER,
        "storage": {"url": "sqlite:///broker.sqlite3"},
        "keys": {"dir": "keys", "algorithms": ["RS256", "ES256"]},
        "upstream": {
            "qq": {
                "app_id": "101000001",
                "app_key": secrets.token_hex(16),
                "base_url": "http://127.0.0.1:9",
            }
        },
        "rate_limits": {"enabled": False},
        "clients": [
            _client("rp-a", f"{bc}/rp-a"),
            _client("rp-b", f"{bc}/rp-b"),
            _client("rp-none", None),
            _client("rp-pair", f"{bc}/rp-pair", subject="pairwise"),
            _client("rp-es", f"{bc}/rp-es", id_token_signed_response_alg="ES256"),
            _client("rp-union", f"{bc}/rp-union", subject="unionid"),
            _client("rp-dead", f"http://127.0.0.1:{free_port()}/bc/rp-dead"),
        ],
    }
    config = parse_config(data, source="<test>", base_dir=tmp_path)
    keyring = KeyRing.load_or_create(config.keys.dir, config.keys.algorithms)
    store = SQLStore(config.storage.url)
    store.create_schema()
    receiver.jwks, receiver.issuer = keyring.jwks(), config.issuer
    ctx = ProviderContext(
        config=config,
        store=store,
        keyring=keyring,
        clients={c.client_id: Client(c) for c in config.clients},
        pairwise_salt=SALT,
        upstream=_upstream(config, store),
    )
    yield Setup(ctx, receiver, EndUser(OPENID, None, {}, auth_time=int(time.time())))
    store.close()


@pytest.fixture
def make(setup: Setup) -> Iterator[Callable[..., BackchannelLogout]]:
    """Build BackchannelLogout instances (fast backoff unless told otherwise); close them all."""
    made: list[BackchannelLogout] = []

    def build(**options: Any) -> BackchannelLogout:
        settings: dict[str, Any] = {"timeout": 5.0, "attempts": 3, "backoff": 0.01, **options}
        instance = BackchannelLogout(setup.ctx, **settings)
        made.append(instance)
        return instance

    yield build
    setup.receiver.release_all()
    for instance in made:
        instance.close()


def _notify_one(bc: BackchannelLogout, setup: Setup, client_id: str, sid: str = "sid-1") -> bool:
    futures = bc.notify(setup.user, sid, [client_id])
    assert len(futures) == 1
    return futures[0].result(timeout=30)


# --------------------------------------------------------------------------- the token


def test_logout_token_is_a_typed_signed_jwt_with_the_spec_claims(
    setup: Setup, make: Callable[..., BackchannelLogout]
) -> None:
    bc = make()
    client = setup.ctx.clients["rp-a"]
    token = bc.logout_token(client, setup.user, "sid-42")
    header, claims = setup.receiver.verify(token, "rp-a")
    assert header == {
        "alg": "RS256",
        "kid": setup.ctx.keyring.signing_key("RS256").kid,
        "typ": "logout+jwt",
    }
    assert claims["iss"] == ISSUER and claims["aud"] == "rp-a"
    assert claims["sub"] == OPENID and claims["sid"] == "sid-42"
    assert claims["events"] == {EVENT: {}} and "nonce" not in claims
    assert abs(claims["iat"] - time.time()) < 60 and claims["exp"] == claims["iat"] + 120
    other = jwt.decode(
        bc.logout_token(client, setup.user, "sid-42"), options={"verify_signature": False}
    )
    assert len(claims["jti"]) >= 16 and other["jti"] != claims["jti"]


def test_logout_token_uses_the_clients_algorithm_and_its_own_subject(
    setup: Setup, make: Callable[..., BackchannelLogout]
) -> None:
    bc = make()
    es_header, _ = setup.receiver.verify(
        bc.logout_token(setup.ctx.clients["rp-es"], setup.user, "s"), "rp-es"
    )
    assert es_header["alg"] == "ES256"
    assert es_header["kid"] == setup.ctx.keyring.signing_key("ES256").kid
    _, pair = setup.receiver.verify(
        bc.logout_token(setup.ctx.clients["rp-pair"], setup.user, "s"), "rp-pair"
    )
    assert pair["sub"] == pairwise_subject("rp-pair.example", OPENID, SALT) != OPENID


# --------------------------------------------------------------------------- delivery


def test_notify_posts_a_form_encoded_token_the_rp_can_verify(
    setup: Setup, make: Callable[..., BackchannelLogout]
) -> None:
    assert _notify_one(make(), setup, "rp-a", sid="sid-7") is True
    [call] = setup.receiver.calls_for("rp-a")
    assert call.error is None
    assert call.content_type == "application/x-www-form-urlencoded"
    assert call.form_keys == ["logout_token"]
    assert call.claims["sub"] == OPENID and call.claims["sid"] == "sid-7"


def test_only_clients_with_a_uri_and_a_subject_are_notified_once(
    setup: Setup, make: Callable[..., BackchannelLogout]
) -> None:
    ids = ["rp-none", "rp-a", "no-such-client", "rp-union", "rp-a", "rp-es"]
    futures = make().notify(setup.user, "sid-1", ids)
    assert [f.result(timeout=30) for f in futures] == [True, True]
    called = sorted(call.client_id for call in setup.receiver.calls)
    assert called == ["rp-a", "rp-es"]


def test_5xx_is_retried_until_delivered(
    setup: Setup, make: Callable[..., BackchannelLogout]
) -> None:
    setup.receiver.statuses["rp-a"] = [500, 503]
    assert _notify_one(make(attempts=3), setup, "rp-a") is True
    calls = setup.receiver.calls_for("rp-a")
    assert len(calls) == 3 and all(call.error is None for call in calls)


def test_retries_stop_after_the_configured_attempts(
    setup: Setup, make: Callable[..., BackchannelLogout]
) -> None:
    setup.receiver.statuses["rp-a"] = [500] * 10
    assert _notify_one(make(attempts=3), setup, "rp-a") is False
    assert len(setup.receiver.calls_for("rp-a")) == 3


def test_4xx_is_not_retried(setup: Setup, make: Callable[..., BackchannelLogout]) -> None:
    setup.receiver.statuses["rp-a"] = [400]
    assert _notify_one(make(attempts=3), setup, "rp-a") is False
    assert len(setup.receiver.calls_for("rp-a")) == 1


def test_redirects_are_not_followed(setup: Setup, make: Callable[..., BackchannelLogout]) -> None:
    setup.receiver.statuses["rp-a"] = [307]
    assert _notify_one(make(attempts=3), setup, "rp-a") is False
    assert len(setup.receiver.calls_for("rp-a")) == 1
    assert setup.receiver.redirected == []


def test_connection_errors_are_retried_a_bounded_number_of_times(
    setup: Setup, make: Callable[..., BackchannelLogout], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.oidc.backchannel")
    assert _notify_one(make(attempts=3), setup, "rp-dead") is False
    attempts = [
        r.getMessage()
        for r in caplog.records
        if r.name == "broker.oidc.backchannel" and "rp-dead" in r.getMessage()
    ]
    assert len(attempts) == 3
    assert "attempt 3 of 3, giving up" in attempts[-1]


def test_a_receiver_slower_than_the_timeout_ends_in_bounded_time(
    setup: Setup, make: Callable[..., BackchannelLogout]
) -> None:
    setup.receiver.hold("rp-a")  # answers only after HOLD_SECONDS
    timeout, attempts, backoff = 0.3, 2, 0.05
    bound = timeout * attempts + backoff + MARGIN_SECONDS
    assert bound < HOLD_SECONDS  # otherwise a missing timeout could not fail this test
    futures = make(timeout=timeout, attempts=attempts, backoff=backoff).notify(
        setup.user, "sid-1", ["rp-a"]
    )
    assert futures[0].result(timeout=bound) is False
    assert len(setup.receiver.calls_for("rp-a")) == attempts


def test_notify_returns_before_the_receiver_answers(
    setup: Setup, make: Callable[..., BackchannelLogout]
) -> None:
    gate = setup.receiver.hold("rp-a")
    futures = make().notify(setup.user, "sid-1", ["rp-a"])
    # Had notify() waited for the delivery, the receiver would have answered by now.
    assert not setup.receiver.answered.is_set()
    assert not futures[0].done()
    assert setup.receiver.arrived.wait(HOLD_SECONDS)  # the delivery is under way
    gate.set()
    assert futures[0].result(timeout=30) is True
    assert setup.receiver.answered.is_set()


def test_outcomes_are_logged_without_the_token(
    setup: Setup, make: Callable[..., BackchannelLogout], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    setup.receiver.statuses["rp-b"] = [400]
    futures = make().notify(setup.user, "sid-1", ["rp-a", "rp-b"])
    assert [f.result(timeout=30) for f in futures] == [True, False]
    tokens = [call.token for call in setup.receiver.calls]
    assert len(tokens) == 2 and all(tokens)
    assert not any(token in caplog.text for token in tokens)
    ours = [r for r in caplog.records if r.name == "broker.oidc.backchannel"]
    assert any(r.levelno == logging.INFO and "rp-a" in r.getMessage() for r in ours)
    assert any(r.levelno == logging.WARNING and "rp-b" in r.getMessage() for r in ours)


def test_close_ends_deliveries_in_flight_and_later_notifies_fail_fast(
    setup: Setup, make: Callable[..., BackchannelLogout]
) -> None:
    setup.receiver.hold("rp-a")
    bc = make(timeout=0.5, attempts=3, backoff=0.01)
    futures = bc.notify(setup.user, "sid-1", ["rp-a"])
    assert setup.receiver.arrived.wait(HOLD_SECONDS)
    bc.close()
    assert futures[0].done() and futures[0].result() is False
    assert len(setup.receiver.calls_for("rp-a")) == 1  # no retry after close
    late = bc.notify(setup.user, "sid-2", ["rp-b"])
    assert len(late) == 1 and late[0].done() and late[0].result() is False
    assert setup.receiver.calls_for("rp-b") == []


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0}, {"attempts": 0}, {"backoff": -1}, {"max_workers": 0}],
)
def test_settings_that_would_unbound_delivery_are_refused(
    setup: Setup, options: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        BackchannelLogout(setup.ctx, **options)
