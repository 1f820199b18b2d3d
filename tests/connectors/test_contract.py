"""The connector contract kit, run against the built-in QQ connector and the QQ emulator.

Real HTTP on 127.0.0.1: the emulator is served by waitress, the connector is loaded
through its ``qq`` entry point (as create_app loads it), and logins go through the
emulator's authorize endpoint under its ``auto_login`` control. The second half shows
that the kit catches broken connectors: without that, a kit that passes everything would
look exactly like one that works.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import requests

from broker.connectors.base import Identity, UpstreamCancelled, UpstreamRejected
from broker.connectors.contract import (
    CHECKS,
    ContractAdapter,
    ContractFailure,
    ContractSession,
    UpstreamUnderTest,
    follow_to_callback,
    run_contract,
    unused_local_url,
)
from broker.connectors.qq import QQConnector
from broker.connectors.qq import factory as qq_factory
from broker.connectors.registry import ConnectorContext, ConnectorFactory
from broker.emulator import EmulatorSettings, create_emulator_app
from tests.servers import Emulator, serve

APP_ID = "101000042"


class QQAdapter(ContractAdapter):
    """The QQ emulator as the kit's upstream; logins use its ``auto_login`` control."""

    name = "qq"
    users: tuple[str, ...] = ("zhangsan", "lisi")
    single_use_refresh_tokens = True
    supports_unionid = True

    def __init__(self, factory: ConnectorFactory | None = None) -> None:
        self.app_key = secrets.token_hex(16)
        self.emulator: Emulator | None = None
        self.browser = requests.Session()
        self._factory = factory

    def start(self, callback_url: str) -> UpstreamUnderTest:
        settings = EmulatorSettings(
            app_id=APP_ID,
            app_key=self.app_key,
            callbacks=[callback_url],
            unionid_enabled=True,
            cancel_mode="redirect",  # the WAP flow: a cancel comes back with usercancel=1
        )
        self.emulator = Emulator(serve(create_emulator_app(settings)))
        options = {"app_id": APP_ID, "app_key": self.app_key, "base_url": self.emulator.url}
        return UpstreamUnderTest(options=options, secrets=(self.app_key,))

    def stop(self) -> None:
        self.browser.close()
        if self.emulator is not None:
            self.emulator.served.stop()

    def login(self, authorization_url: str, user: str, callback_url: str) -> str:
        assert self.emulator is not None
        self.emulator.control(auto_login=user)
        return follow_to_callback(self.browser, authorization_url, callback_url)

    def cancel(self, authorization_url: str, callback_url: str) -> str | None:
        assert self.emulator is not None
        self.emulator.control(auto_login="cancel")
        return follow_to_callback(self.browser, authorization_url, callback_url)

    def unreachable_options(self, options: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return {**options, "base_url": unused_local_url()}

    def connector_factory(self) -> ConnectorFactory | None:
        return self._factory


@pytest.fixture(scope="module")
def contract() -> Iterator[ContractSession]:
    with ContractSession(QQAdapter()) as session:
        yield session


@pytest.mark.parametrize("check", CHECKS, ids=str)
def test_qq_connector_keeps_the_contract(contract: ContractSession, check: Any) -> None:
    check.run(contract)


def test_run_contract_reports_every_check_passed() -> None:
    report = run_contract(QQAdapter())
    report.assert_ok()
    assert [result.name for result in report.results] == [check.name for check in CHECKS]
    # QQ has refresh tokens, UnionID, a cancel redirect and a dead-port variant: all apply.
    assert not [r for r in report.results if r.detail.startswith("not applicable")]


def test_the_session_loads_the_connector_through_its_entry_point() -> None:
    with ContractSession(QQAdapter()) as session:
        assert isinstance(session.connector, QQConnector)
        assert session.factory() is qq_factory


# --------------------------------------------------------------------------- broken connectors


def broken(cls: type[QQConnector]) -> ConnectorFactory:
    """A factory building ``cls`` (a QQConnector with one promise broken) from QQ options."""

    def factory(options: Mapping[str, Any], context: ConnectorContext) -> QQConnector:
        built = qq_factory(options, context)
        connector = cls(app_id=built.app_id, app_key=options["app_key"], base_url=built.base_url)
        built.close()
        return connector

    return factory


def failures(factory: ConnectorFactory) -> dict[str, str]:
    # The entry point check fails by design here: "qq" names the real factory.
    report = run_contract(QQAdapter(factory))
    return {r.name: r.detail for r in report.failures if r.name != "entry_point"}


class CodeFromNowhere(QQConnector):
    def parse_callback(self, args: Mapping[str, str]) -> str:
        return args.get("code", "")  # no code, no cancel: the broker would call QQ with ""


class LeakyKey(QQConnector):
    def exchange(self, *, code: str, redirect_uri: str, want_unionid: bool = False) -> Identity:
        try:
            return super().exchange(code=code, redirect_uri=redirect_uri, want_unionid=want_unionid)
        except UpstreamRejected as err:
            raise UpstreamRejected(
                oauth_error=err.oauth_error,
                message_key=err.message_key,
                hint=f"QQ refused app key {self._app_key}",
            ) from err


class HidesDeadRefresh(QQConnector):
    def refresh(self, refresh_token: str) -> Any:
        try:
            return super().refresh(refresh_token)
        except UpstreamRejected:
            # A dead refresh token reported as a generic rejection: families never end.
            raise UpstreamRejected(hint="refresh failed") from None


class Untyped(QQConnector):
    def check_token(self, access_token: str, want_unionid: bool = False) -> tuple[str, str | None]:
        if len(access_token) == 32 and access_token.islower():
            raise KeyError("openid")  # what a careless parser raises: an HTTP 500
        return super().check_token(access_token, want_unionid)


class ForgetsState(QQConnector):
    def authorization_url(
        self, *, redirect_uri: str, state: str, display: str | None = None
    ) -> str:
        return super().authorization_url(redirect_uri=redirect_uri, state=state or "-")


def test_a_connector_inventing_codes_fails_the_callback_checks() -> None:
    failed = failures(broken(CodeFromNowhere))
    assert "callback_without_code" in failed
    assert "returned a str instead of raising UpstreamCancelled" in failed["callback_without_code"]


def test_a_connector_leaking_its_key_fails_and_the_report_masks_the_key() -> None:
    adapter = QQAdapter(broken(LeakyKey))
    report = run_contract(adapter)
    failed = {r.name: r.detail for r in report.failures}
    assert "contains a secret" in failed["bad_code"]
    assert adapter.app_key not in report.summary()


def test_a_connector_hiding_dead_refresh_tokens_fails() -> None:
    failed = failures(broken(HidesDeadRefresh))
    assert failed["dead_tokens"].startswith("refresh(an unknown token): oauth_error")
    assert failed["refresh"].startswith("refresh(a spent refresh token): oauth_error")


def test_a_connector_raising_untyped_errors_fails() -> None:
    failed = failures(broken(Untyped))
    assert "raised KeyError instead of an UpstreamError" in failed["dead_tokens"]


def test_a_connector_accepting_an_empty_state_fails() -> None:
    failed = failures(broken(ForgetsState))
    assert "empty state" in failed["authorization_url"]


def test_the_entry_point_check_notices_an_unregistered_factory() -> None:
    report = run_contract(QQAdapter(broken(QQConnector)))
    failed = {r.name: r.detail for r in report.failures}
    assert list(failed) == ["entry_point"]
    assert "not to the factory under test" in failed["entry_point"]


def test_a_setup_failure_is_one_failed_result() -> None:
    class NoUsers(QQAdapter):
        users = ()

    report = run_contract(NoUsers())
    assert [(r.name, r.outcome) for r in report.results] == [("setup", "failed")]
    with pytest.raises(ContractFailure, match="at least one emulator user"):
        report.assert_ok()


def test_follow_to_callback_refuses_a_page_instead_of_a_redirect() -> None:
    with ContractSession(QQAdapter()) as session:
        url = session.authorization_url("s" * 16)
        broken_url = url.replace("client_id=", "client_id=9")  # QQ shows an error page
        with pytest.raises(ContractFailure, match="answered HTTP 200"):
            follow_to_callback(requests.Session(), broken_url, session.callback_url)


def test_cancel_is_typed() -> None:
    # A direct look at what the callback_error check relies on (usercancel=1 from QQ).
    with ContractSession(QQAdapter()) as session:
        callback = session.adapter.cancel(session.authorization_url("st" * 8), session.callback_url)
        assert callback is not None and "usercancel=1" in callback
        with pytest.raises(UpstreamCancelled):
            session.connector.parse_callback({"usercancel": "1", "state": "st" * 8})
