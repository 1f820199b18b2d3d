"""Finding connectors by entry point name, and the one-line errors when that goes wrong.

Entry points are real: the ``qq`` one comes from this project's own install metadata
(pyproject.toml), the others from throwaway ``*.dist-info`` directories put on
``sys.path`` for one test, which ``importlib.metadata`` reads like any installed package.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from broker.config import UNUSED_QQ, ConfigError, load_config, parse_config
from broker.connectors import qq
from broker.connectors.qq import QQConnector
from broker.connectors.registry import (
    ENTRY_POINT_GROUP,
    ConnectorContext,
    ConnectorLoadError,
    connector_from_config,
    connector_options,
    create_connector,
    installed_connectors,
    load_factory,
)
from tests.example_connector.distinfo import write_dist_info

HERE = "tests.connectors.test_registry"
CONTEXT = ConnectorContext(
    issuer="http://127.0.0.1:9", callback_url="http://127.0.0.1:9/qq/callback", development=True
)
SECRET = "s3cr3t-value-that-must-not-show"


# Factories the throwaway entry points point at.


def raising_factory(options: Mapping[str, Any], context: ConnectorContext) -> Any:
    raise ValueError(f"client_secret {options['client_secret']} is too short")


def object_factory(options: Mapping[str, Any], context: ConnectorContext) -> Any:
    return object()


class HalfConnector:
    name = "half"

    def authorization_url(
        self, *, redirect_uri: str, state: str, display: str | None = None
    ) -> str:
        return redirect_uri


def half_factory(options: Mapping[str, Any], context: ConnectorContext) -> Any:
    return HalfConnector()


NOT_A_FACTORY = 42


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path (for this test only) to write dist-infos into."""
    root = tmp_path / "site-packages"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def qq_config(**upstream: Any) -> Any:
    return parse_config(
        {
            "issuer": "http://127.0.0.1:8000",
            "upstream": upstream
            or {"qq": {"app_id": "101000001", "app_key": SECRET, "base_url": "http://127.0.0.1:1"}},
            "clients": [
                {
                    "client_id": "c",
                    "redirect_uris": ["http://127.0.0.1:9/cb"],
                    "token_endpoint_auth_method": "none",
                }
            ],
        },
        source="<test>",
    )


# --------------------------------------------------------------------------- the qq entry point


def test_qq_is_registered_through_the_installed_metadata() -> None:
    entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    (entry,) = [ep for ep in entry_points if ep.name == "qq"]
    assert entry.value == "broker.connectors.qq:factory"
    assert entry.dist is not None and entry.dist.metadata["Name"] == "qq-oidc-broker"
    assert load_factory("qq") is qq.factory


def test_create_app_builds_the_configured_qq_connector_through_the_registry() -> None:
    config = qq_config()
    assert config.upstream.connector == "qq"
    connector = connector_from_config(config)
    assert isinstance(connector, QQConnector)
    assert (connector.app_id, connector.base_url) == ("101000001", "http://127.0.0.1:1")
    assert connector_options(config)["app_key"] == SECRET
    connector.close()


def test_without_installed_metadata_the_builtin_qq_still_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A source checkout that was never `pip install`-ed: no entry points at all.
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda **_: importlib.metadata.EntryPoints(())
    )
    assert installed_connectors() == {}
    assert load_factory("qq") is qq.factory


def test_the_qq_factory_checks_its_options_without_echoing_them() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) colour; known: app_id"):
        qq.factory({"app_id": "1", "app_key": SECRET, "colour": "red"}, CONTEXT)
    with pytest.raises(ValueError, match="app_key must be a non-empty string") as caught:
        qq.factory({"app_id": "1", "app_key": ""}, CONTEXT)
    assert SECRET not in str(caught.value)
    # The whole upstream.qq section may be handed over: broker-only keys are ignored.
    built = qq.factory(
        {"app_id": 101, "app_key": SECRET, "subject": "unionid", "allow_staging_base_url": True},
        CONTEXT,
    )
    assert (built.app_id, built.base_url, built.scope) == (
        "101",
        "https://graph.qq.com",
        "get_user_info",
    )
    built.close()


# --------------------------------------------------------------------------- errors


def test_an_unknown_name_lists_the_installed_connectors(site: Path) -> None:
    write_dist_info(site, "other-connector", {"other": f"{HERE}:half_factory"})
    with pytest.raises(ConnectorLoadError) as caught:
        load_factory("qqq")
    error = caught.value
    assert isinstance(error, ConfigError)  # the CLI prints it as one line, exit 2
    assert error.path == "upstream.connector"
    assert "no connector named 'qqq' is installed" in error.problem
    assert "did you mean 'qq'?" in error.problem
    assert error.problem.endswith("installed: other, qq")
    assert "\n" not in str(error)


def test_a_factory_that_raises_is_one_line_with_secrets_masked(site: Path) -> None:
    write_dist_info(site, "raising-connector", {"raising": f"{HERE}:raising_factory"})
    with pytest.raises(ConnectorLoadError) as caught:
        create_connector("raising", {"client_secret": SECRET}, CONTEXT, source="cfg.yaml")
    error = caught.value
    assert str(error) == (
        "cfg.yaml: upstream.raising: connector 'raising' refused its options: "
        "client_secret *** is too short (ValueError)"
    )
    assert error.__cause__ is None and error.__suppress_context__


def test_a_factory_returning_a_non_connector_is_refused(site: Path) -> None:
    write_dist_info(
        site,
        "odd-connectors",
        {"object": f"{HERE}:object_factory", "half": f"{HERE}:half_factory"},
    )
    with pytest.raises(
        ConnectorLoadError, match=r"returned a value of type object, which is not a Connector"
    ):
        create_connector("object", {}, CONTEXT)
    with pytest.raises(ConnectorLoadError) as caught:
        create_connector("half", {}, CONTEXT)
    assert "(missing: parse_callback, exchange, refresh, check_token, user_info)" in str(
        caught.value
    )


def test_an_entry_point_that_is_not_callable_or_does_not_import(site: Path) -> None:
    write_dist_info(
        site,
        "broken-connectors",
        {"number": f"{HERE}:NOT_A_FACTORY", "gone": "tests.connectors.no_such_module:factory"},
    )
    with pytest.raises(ConnectorLoadError, match=r"is a int, not a factory"):
        load_factory("number")
    with pytest.raises(ConnectorLoadError) as caught:
        load_factory("gone")
    assert "cannot import tests.connectors.no_such_module:factory (ModuleNotFoundError" in str(
        caught.value
    )


def test_two_packages_claiming_one_name_are_refused(site: Path) -> None:
    write_dist_info(site, "first-pkg", {"dup": f"{HERE}:half_factory"})
    write_dist_info(site, "second-pkg", {"dup": f"{HERE}:object_factory"})
    with pytest.raises(ConnectorLoadError) as caught:
        load_factory("dup")
    message = str(caught.value)
    assert "registered by several packages" in message
    assert "first-pkg 0.0.1" in message and "second-pkg 0.0.1" in message


# --------------------------------------------------------------------------- config


YAML = """\
issuer: http://127.0.0.1:8000
upstream:
  connector: {name}
{section}
clients:
  - client_id: c
    token_endpoint_auth_method: none
    redirect_uris: [http://127.0.0.1:9/cb]
"""


def write_config(tmp_path: Path, name: str, section: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(YAML.format(name=name, section=section), encoding="utf-8")
    return path


def test_config_names_an_uninstalled_connector_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, "wechat"), environ={})
    error = caught.value
    assert (error.path, error.line) == ("upstream.connector", 3)
    assert "no connector named 'wechat' is installed" in error.problem


def test_config_takes_a_plugin_section_free_form_with_variables(tmp_path: Path, site: Path) -> None:
    write_dist_info(site, "other-connector", {"other": f"{HERE}:half_factory"})
    section = (
        "  other:\n"
        "    client_secret: ${OTHER_SECRET}\n"
        "    nested: {list: [a, '${OTHER_SECRET:-x}'], n: 3}\n"
    )
    config = load_config(write_config(tmp_path, "other", section), environ={"OTHER_SECRET": SECRET})
    assert config.upstream.connector == "other"
    assert config.upstream.options == {
        "client_secret": SECRET,
        "nested": {"list": ["a", SECRET], "n": 3},
    }
    assert config.upstream.qq is UNUSED_QQ  # upstream.qq is optional for another connector
    assert SECRET not in repr(config)
    assert connector_options(config) is config.upstream.options


def test_config_refuses_a_section_for_a_connector_not_in_use(tmp_path: Path) -> None:
    section = "  qq: {app_id: '1', app_key: k}\n  other: {a: 1}\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, "qq", section), environ={})
    assert caught.value.path == "upstream.other"
    assert "unknown key 'other'" in caught.value.problem


def test_config_refuses_a_plugin_section_that_is_not_a_mapping(tmp_path: Path, site: Path) -> None:
    write_dist_info(site, "other-connector", {"other": f"{HERE}:half_factory"})
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, "other", "  other: [1, 2]\n"), environ={})
    assert caught.value.path == "upstream.other"
    assert "must be a mapping of the 'other' connector's options" in caught.value.problem


def test_config_keeps_validating_upstream_qq_for_another_connector(
    tmp_path: Path, site: Path
) -> None:
    write_dist_info(site, "other-connector", {"other": f"{HERE}:half_factory"})
    section = "  qq: {app_id: 'abc', app_key: k}\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, "other", section), environ={})
    assert caught.value.path == "upstream.qq.app_id"


def test_config_refuses_a_malformed_connector_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, "'two words'"), environ={})
    assert caught.value.path == "upstream.connector"
    assert "is not a connector name" in caught.value.problem


def test_the_cli_reports_a_connector_problem_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "wechat")
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{path}: line 3: upstream.connector: no connector named 'wechat'" in err
