"""broker.config: the documented schema loads; every mistake is one line naming the file,
the YAML line and the key path; secrets never leak into messages."""

from __future__ import annotations

import dataclasses
import secrets
import textwrap
from pathlib import Path

import pytest

from broker import keys as broker_keys
from broker.config import (
    DEFAULT_CONFIG_NAME,
    MAX_WORKERS,
    SIGNING_ALGORITHMS,
    Config,
    ConfigError,
    ServerConfig,
    auto_workers,
    is_loopback_url,
    load_config,
    parse_config,
    resolve_config_path,
)

APP_KEY = "appkey-SECRET-0123456789abcdef"
DEMO_SECRET = "demo-SECRET-value"
PROD_SECRET = "prod-client-SECRET-" + "x7Kq9vLm2Rt8Wz4N"
ENV = {
    "QQ_APP_ID": "101000001",
    "QQ_APP_KEY": APP_KEY,
    "DEMO_CLIENT_SECRET": DEMO_SECRET,
    "PROD_CLIENT_SECRET": PROD_SECRET,
}

# The example from DESIGN.md, verbatim (comments included).
DESIGN_EXAMPLE = """\
issuer: http://127.0.0.1:8000        # public base URL; discovery at {issuer}/.well-known/openid-configuration
server: {host: 127.0.0.1, port: 8000}
secret_key: ${BROKER_SECRET_KEY:-}    # optional: when empty, generated on first start and kept beside the signing keys
storage:
  url: sqlite:///broker.sqlite3      # postgresql+psycopg://user@host/db for several instances
keys:
  dir: keys
  algorithm: RS256                   # RS256 always published; ES256 / EdDSA selectable
upstream:
  qq:
    app_id: ${QQ_APP_ID}
    app_key: ${QQ_APP_KEY}           # secrets come from the environment, never from the file
    base_url: https://graph.qq.com   # an emulator's URL for development and tests
    scope: get_user_info
    subject: openid                  # or unionid
rate_limits:                         # optional; per client IP, and per client_id at the token endpoint
  enabled: true                      # false turns them off (benchmarks, trusted networks)
  storage: memory                    # redis://127.0.0.1:6379/0 shares the counters across instances
clients:
  - client_id: demo
    client_secret: ${DEMO_CLIENT_SECRET}
    redirect_uris: [http://127.0.0.1:9000/callback]
    token_endpoint_auth_method: client_secret_basic   # client_secret_post, none (public, PKCE required)
"""  # noqa: E501

DEV = """\
issuer: http://127.0.0.1:8000
upstream:
  qq:
    app_id: ${QQ_APP_ID}
    app_key: ${QQ_APP_KEY}
clients:
  - client_id: demo
    client_secret: ${DEMO_CLIENT_SECRET}
    redirect_uris: [http://127.0.0.1:9000/callback]
"""

PROD = """\
issuer: https://login.example.com
upstream:
  qq:
    app_id: ${QQ_APP_ID}
    app_key: ${QQ_APP_KEY}
clients:
  - client_id: grafana
    client_secret: ${PROD_CLIENT_SECRET}
    redirect_uris: [https://grafana.example.com/login/generic_oauth]
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), ENV if environ is None else environ)


def load_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    return info.value


def line_of(text: str, needle: str) -> int:
    """1-based number of the first line of ``text`` containing ``needle``."""
    for number, line in enumerate(textwrap.dedent(text).splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def assert_error(
    error: ConfigError, tmp_path: Path, path: str, fragment: str, line: int | None
) -> None:
    source = str(tmp_path / "config.yaml")
    message = str(error)
    assert "\n" not in message
    assert error.source == source and message.startswith(source + ": ")
    assert error.path == path, message
    assert fragment in error.problem, message
    assert error.line == line, message
    expected_prefix = f"{source}: line {line}: {path}: " if line else f"{source}: {path}: "
    assert message.startswith(expected_prefix), message


# --------------------------------------------------------------------------- loading


def test_design_example_loads_with_its_environment(tmp_path: Path) -> None:
    config = load(tmp_path, DESIGN_EXAMPLE)

    assert config.issuer == "http://127.0.0.1:8000"
    assert config.is_development
    assert config.server.host == "127.0.0.1" and config.server.port == 8000
    assert config.server.threads == 32
    assert config.secret_key is None  # ${BROKER_SECRET_KEY:-} unset → not configured
    assert config.pairwise_salt is None
    assert config.storage.url == f"sqlite:///{tmp_path}/broker.sqlite3"
    assert config.keys.dir == tmp_path / "keys"
    assert config.keys.algorithm == "RS256" and config.keys.algorithms == ("RS256",)
    qq = config.upstream.qq
    assert (qq.app_id, qq.app_key) == ("101000001", APP_KEY)
    assert qq.base_url == "https://graph.qq.com" and qq.scope == "get_user_info"
    assert qq.subject == "openid" and not qq.allow_staging_base_url
    assert config.rate_limits.enabled and config.rate_limits.storage == "memory"
    assert config.lifetimes.code == 60 and config.lifetimes.refresh_absolute == 7776000
    assert config.claims.picture == "https" and not config.claims.gender
    assert config.source == str(tmp_path / "config.yaml")
    (demo,) = config.clients
    assert demo.client_id == "demo" and demo.client_secret == DEMO_SECRET
    assert demo.redirect_uris == ("http://127.0.0.1:9000/callback",)
    assert demo.grant_types == ("authorization_code",)
    assert demo.subject is None and demo.email == "omit" and demo.upstream_check == "cached"
    assert config.client("demo") is demo
    assert config.client("nobody") is None


def test_repo_config_example_loads_if_present() -> None:
    path = Path(__file__).resolve().parent.parent / DEFAULT_CONFIG_NAME
    if not path.exists():
        pytest.skip("no config.yaml in the repository yet")
    config = load_config(path, ENV)
    assert config.issuer


def test_every_optional_key_is_understood(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        issuer: https://login.example.com/oidc
        server: {host: 0.0.0.0, port: 8443, threads: 16}
        secret_key: ${SK}
        pairwise_salt: ${SALT}
        storage: {url: postgresql+psycopg://broker@db/broker}
        keys: {dir: /var/lib/broker/keys, algorithm: ES256, algorithms: [RS256, ES256, EdDSA]}
        upstream:
          qq:
            app_id: 101000001
            app_key: ${QQ_APP_KEY}
            subject: unionid
            scope: get_user_info
        rate_limits: {enabled: false, storage: "redis://127.0.0.1:6379/0"}
        lifetimes: {code: 30, login: 300, access_token: 600, id_token: 600,
                    refresh_idle: 86400, refresh_absolute: 864000, session: 3600}
        claims: {picture: proxy, gender: true, email_domain: users.example.com}
        clients:
          - client_id: full
            client_secret: ${PROD_CLIENT_SECRET}
            redirect_uris: [https://a.example.com/cb, "http://localhost:3000/cb?x=1"]
            token_endpoint_auth_method: client_secret_post
            grant_types: [authorization_code, refresh_token]
            post_logout_redirect_uris: [https://a.example.com/bye]
            backchannel_logout_uri: https://a.example.com/bcl
            subject: pairwise
            sector_identifier_uri: https://a.example.com/sector.json
            email: synthetic
            upstream_check: strict
            access_token_format: jwt
            id_token_signed_response_alg: EdDSA
            expose_qq_ids: true
          - client_id: spa
            token_endpoint_auth_method: none
            redirect_uris: [https://spa.example.com/cb]
            upstream_check: off
          - client_id: m2m
            token_endpoint_auth_method: private_key_jwt
            redirect_uris: [https://m2m.example.com/cb]
            jwks: {keys: [{kty: OKP, crv: Ed25519, x: 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo}]}
          - client_id: m2m-uri
            token_endpoint_auth_method: private_key_jwt
            redirect_uris: [https://m2m.example.com/cb]
            jwks_uri: https://m2m.example.com/jwks.json
        """,
        {**ENV, "SK": secrets.token_urlsafe(32), "SALT": secrets.token_urlsafe(16)},
    )
    assert not config.is_development
    assert config.server == config.server.__class__(host="0.0.0.0", port=8443, threads=16)  # noqa: S104
    assert config.storage.url == "postgresql+psycopg://broker@db/broker"
    assert config.keys.dir == Path("/var/lib/broker/keys")
    assert config.keys.algorithms == ("RS256", "ES256", "EdDSA")
    assert config.upstream.qq.app_id == "101000001"  # an unquoted number is accepted
    assert config.upstream.qq.subject == "unionid"
    assert not config.rate_limits.enabled
    assert config.lifetimes.session == 3600
    assert config.claims.picture == "proxy" and config.claims.gender
    full = config.client("full")
    assert full is not None
    assert full.grant_types == ("authorization_code", "refresh_token")
    assert full.subject == "pairwise" and full.email == "synthetic"
    assert full.access_token_format == "jwt" and full.id_token_signed_response_alg == "EdDSA"
    assert full.expose_qq_ids and full.backchannel_logout_uri == "https://a.example.com/bcl"
    spa = config.client("spa")
    assert spa is not None and spa.client_secret is None
    assert spa.upstream_check == "off"  # YAML 1.2: 'off' is a string, not False
    m2m = config.client("m2m")
    assert m2m is not None and m2m.jwks is not None and m2m.jwks["keys"][0]["kty"] == "OKP"


def test_config_is_frozen_and_repr_hides_secrets(tmp_path: Path) -> None:
    config = load(tmp_path, PROD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.issuer = "https://evil.example"  # type: ignore[misc]
    text = repr(config)
    assert APP_KEY not in text and PROD_SECRET not in text


def test_signing_algorithms_match_the_key_module() -> None:
    assert SIGNING_ALGORITHMS == broker_keys.SUPPORTED_ALGORITHMS


# --------------------------------------------------------------------------- paths


def test_resolve_config_path_prefers_cli_then_env_then_default() -> None:
    env = {"BROKER_CONFIG": "/etc/broker/env.yaml"}
    assert resolve_config_path("cli.yaml", env) == Path("cli.yaml")
    assert resolve_config_path(None, env) == Path("/etc/broker/env.yaml")
    assert resolve_config_path(None, {}) == Path("config.yaml")
    assert resolve_config_path("", {"BROKER_CONFIG": ""}) == Path("config.yaml")


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "broker"
    conf_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = conf_dir / "config.yaml"
    path.write_text(
        DEV + "storage: {url: 'sqlite:///data/b.sqlite3?timeout=5'}\nkeys: {dir: ../keys}\n"
    )
    config = load_config(Path("..") / "etc" / "broker" / "config.yaml", ENV)
    assert config.storage.url == f"sqlite:///{conf_dir}/data/b.sqlite3?timeout=5"
    assert config.keys.dir == tmp_path / "etc" / "keys"


@pytest.mark.parametrize(
    "url",
    ["sqlite:////var/lib/b.sqlite3", "sqlite://", "sqlite:///:memory:", "postgresql://u@h/db"],
)
def test_absolute_and_non_file_database_urls_are_kept(tmp_path: Path, url: str) -> None:
    config = load(tmp_path, DEV + f"storage: {{url: '{url}'}}\n")
    assert config.storage.url == url


def test_parse_config_validates_a_dict_the_same_way(tmp_path: Path) -> None:
    data = {
        "issuer": "http://localhost:8000",
        "upstream": {"qq": {"app_id": "${QQ_APP_ID}", "app_key": "${QQ_APP_KEY}"}},
        "storage": {"url": "sqlite:///dev.sqlite3"},
        "keys": {"dir": "k"},
    }
    config = parse_config(data, base_dir=tmp_path, environ=ENV)
    assert config.upstream.qq.app_key == APP_KEY
    assert config.clients == ()
    assert config.storage.url == f"sqlite:///{tmp_path}/dev.sqlite3"
    assert config.keys.dir == tmp_path / "k"
    assert config.source == "<config>"

    bad = {**data, "clients": [{"client_id": "x", "redirect_uris": ["https://a/cb#f"]}]}
    with pytest.raises(ConfigError) as info:
        parse_config(bad, source="dev-defaults", environ=ENV)
    assert str(info.value).startswith("dev-defaults: clients[0].redirect_uris[0]: ")
    assert info.value.line is None


# --------------------------------------------------------------------------- file and YAML


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", ENV)
    assert str(info.value) == (
        f"{tmp_path / 'nope.yaml'}: file not found (pass --config FILE or set BROKER_CONFIG)"
    )


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, ENV)


def test_malformed_yaml_reports_the_line_without_quoting_it(tmp_path: Path) -> None:
    text = DEV.replace("    app_key: ${QQ_APP_KEY}", "    app_key: 'never-shown-SECRET\n  x: [")
    error = load_error(tmp_path, text)
    assert "malformed YAML" in str(error)
    assert error.line is not None and error.line >= line_of(text, "never-shown")
    assert "never-shown-SECRET" not in str(error)


def test_indentation_error_line(tmp_path: Path) -> None:
    text = DEV.replace("  qq:\n", "  qq:\n     bad: indent\n")
    error = load_error(tmp_path, text)
    assert error.line == line_of(text, "app_id") and "malformed YAML" in error.problem


def test_empty_file_and_non_mapping(tmp_path: Path) -> None:
    assert "file is empty" in str(load_error(tmp_path, "# nothing\n"))
    error = load_error(tmp_path, "- a\n- b\n")
    assert "must be a mapping" in str(error)


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    text = DEV + "issuer: https://other.example\n"
    error = load_error(tmp_path, text)
    assert_error(error, tmp_path, "issuer", "duplicate key (first at line 1)", len(DEV.split("\n")))


# --------------------------------------------------------------------------- schema errors


def test_unknown_top_level_key_suggests_the_closest(tmp_path: Path) -> None:
    text = DEV + "lifetime:\n  code: 30\n"
    error = load_error(tmp_path, text)
    assert_error(
        error, tmp_path, "lifetime", "did you mean 'lifetimes'?", line_of(text, "lifetime:")
    )


def test_unknown_nested_key_suggests_the_closest(tmp_path: Path) -> None:
    text = DEV.replace("    redirect_uris:", "    redirect_uri:")
    error = load_error(tmp_path, text)
    assert_error(
        error,
        tmp_path,
        "clients[0].redirect_uri",
        "unknown key 'redirect_uri'; did you mean 'redirect_uris'?",
        line_of(text, "redirect_uri:"),
    )


def test_unknown_key_without_a_close_match_lists_known_keys(tmp_path: Path) -> None:
    text = DEV + "server: {hots: 1.2.3.4, zzz: 1}\n"
    error = load_error(tmp_path, text)
    assert error.path == "server.hots" and "did you mean 'host'?" in error.problem
    text = DEV + "server: {zzz: 1}\n"
    error = load_error(tmp_path, text)
    assert error.path == "server.zzz" and "known keys: host, port, threads" in error.problem


def test_missing_space_after_colon_does_not_print_the_value(tmp_path: Path) -> None:
    text = DEV.replace("    app_id: ${QQ_APP_ID}\n", "    app_id: 1\n    zz:s3cr3t-SECRET\n")
    error = load_error(tmp_path, text, ENV)
    assert "s3cr3t" not in str(error)


@pytest.mark.parametrize(
    ("text", "path", "fragment", "needle"),
    [
        (DEV.replace("issuer: http://127.0.0.1:8000\n", ""), "issuer", "is required", None),
        (DEV.replace("    app_id: ${QQ_APP_ID}\n", ""), "upstream.qq.app_id", "is required", "qq:"),
        (DEV.replace("    app_key: ${QQ_APP_KEY}\n", ""), "upstream.qq.app_key", "required", "qq:"),
        (DEV.replace("  - client_id: demo\n    client_secret", "  - client_secret"),
         "clients[0].client_id", "is required", "client_secret"),
        (DEV.replace("[http://127.0.0.1:9000/callback]", "[]"),
         "clients[0].redirect_uris", "must not be empty", "redirect_uris"),
        (DEV.replace("    redirect_uris: [http://127.0.0.1:9000/callback]\n", ""),
         "clients[0].redirect_uris", "is required", "client_id"),
        ("issuer: http://127.0.0.1:8000\n", "upstream", "is required", None),
    ],
)  # fmt: skip
def test_required_keys(
    tmp_path: Path, text: str, path: str, fragment: str, needle: str | None
) -> None:
    error = load_error(tmp_path, text)
    assert_error(error, tmp_path, path, fragment, line_of(text, needle) if needle else None)


def test_clients_may_be_empty_or_absent(tmp_path: Path) -> None:
    base = DEV.split("clients:")[0]
    assert load(tmp_path, base).clients == ()
    assert load(tmp_path, base + "clients: []\n").clients == ()


@pytest.mark.parametrize(
    ("extra", "path", "fragment", "needle"),
    [
        ("server: {port: eighty}\n", "server.port", "must be an integer", "server"),
        ("server: {port: true}\n", "server.port", "must be an integer, got a boolean", "server"),
        ("server: {port: 70000}\n", "server.port", "at most 65535", "server"),
        ("server: {threads: 0}\n", "server.threads", "at least 1", "server"),
        ("server: [1]\n", "server", "must be a mapping", "server"),
        ("rate_limits: {enabled: 'yes'}\n", "rate_limits.enabled", "true or false", "rate_"),
        ("rate_limits: {enabled: on}\n", "rate_limits.enabled", "true or false", "rate_"),
        ("lifetimes:\n  code: 601\n", "lifetimes.code", "at most 600", "code:"),
        ("lifetimes:\n  session: 0\n", "lifetimes.session", "at least 1", "session:"),
        ("lifetimes:\n  access_token: -5\n", "lifetimes.access_token", "at least 1", "access_"),
        ("lifetimes:\n  login: 1.5\n", "lifetimes.login", "must be an integer", "login:"),
        ("lifetimes:\n  refresh_idle: 10\n  refresh_absolute: 5\n", "lifetimes.refresh_idle",
         "refresh_absolute", "refresh_idle"),
        ("claims:\n  picture: http\n", "claims.picture", "not one of: https, proxy", "picture"),
        ("claims:\n  email_domain: 'a b'\n", "claims.email_domain", "not a domain", "email_d"),
        ("storage: {url: broker.sqlite3}\n", "storage.url", "must be a database URL", "storage"),
        ("rate_limits: {storage: redis}\n", "rate_limits.storage", "'memory' or", "rate_"),
        ("keys: {algorithm: HS256}\n", "keys.algorithm", "not one of: RS256, ES256, EdDSA",
         "keys"),
        ("keys:\n  algorithms: [RS256, none]\n", "keys.algorithms[1]", "'none' is not one of",
         "algorithms"),
        ("keys:\n  algorithms: [RS256, RS256]\n", "keys.algorithms[1]", "listed twice",
         "algorithms"),
        ("keys:\n  algorithm: EdDSA\n  algorithms: [RS256, ES256]\n", "keys.algorithm",
         "must also be listed", "algorithm:"),
        ("pairwise_salt: [a]\n", "pairwise_salt", "must be a string", "pairwise"),
    ],
)  # fmt: skip
def test_wrong_types_and_values(
    tmp_path: Path, extra: str, path: str, fragment: str, needle: str
) -> None:
    text = DEV + extra
    error = load_error(tmp_path, text)
    assert_error(error, tmp_path, path, fragment, line_of(text, needle))


# --------------------------------------------------------------------------- server.workers


def test_workers_default_to_one_per_usable_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 2, 5})  # a cpuset of 3
    assert auto_workers() == 3
    assert load(tmp_path, DEV).server.workers == 3  # absent: auto
    assert load(tmp_path, DEV + "server: {workers: auto}\n").server.workers == 3
    assert ServerConfig().workers == 3  # the dataclass default is auto as well
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(200)))
    assert auto_workers() == MAX_WORKERS  # capped like an explicit number


def test_workers_fall_back_to_the_cpu_count_without_affinity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr("os.sched_getaffinity", raising=False)  # not Linux
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert auto_workers() == 6
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert auto_workers() == 1


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("1", {}, 1),  # today's single-process server
        ("4", {}, 4),
        (str(MAX_WORKERS), {}, MAX_WORKERS),
        ("${WORKERS:-auto}", {"WORKERS": "8"}, 8),
        ("'${WORKERS:-auto}'", {"WORKERS": "auto"}, "auto"),
        ("${WORKERS:-auto}", {}, "auto"),
        ("${WORKERS:-}", {}, "auto"),  # empty: not configured
    ],
)
def test_workers_take_a_number_or_auto(
    tmp_path: Path, value: str, environ: dict[str, str], expected: int | str
) -> None:
    config = load(tmp_path, DEV + f"server:\n  workers: {value}\n", {**ENV, **environ})
    assert config.server.workers == (auto_workers() if expected == "auto" else expected)


@pytest.mark.parametrize(
    ("value", "environ", "got"),
    [
        ("0", {}, "got 0"),
        ("65", {}, "got 65"),
        ("-2", {}, "got -2"),
        ("many", {}, "got 'many'"),
        ("AUTO", {}, "got 'AUTO'"),
        ("2.5", {}, "got a number"),
        ("true", {}, "got a boolean"),
        ("[2]", {}, "got a list"),
        ("${WORKERS}", {"WORKERS": "lots"}, "got 'lots'"),
        ("${WORKERS}", {"WORKERS": "0"}, "got 0"),
    ],
)
def test_bad_workers_name_the_choices(
    tmp_path: Path, value: str, environ: dict[str, str], got: str
) -> None:
    text = DEV + f"server:\n  workers: {value}\n"
    error = load_error(tmp_path, text, {**ENV, **environ})
    fragment = f"must be auto (one per CPU) or a number of processes from 1 to 64, {got}"
    assert_error(error, tmp_path, "server.workers", fragment, line_of(text, "workers:"))


@pytest.mark.parametrize(
    ("client_lines", "path", "fragment", "needle"),
    [
        ("    token_endpoint_auth_method: client_secret_jwt\n",
         "clients[0].token_endpoint_auth_method", "did you mean 'client_secret_post'", "token_"),
        ("    token_endpoint_auth_method: none\n", "clients[0].client_secret",
         "must be empty for token_endpoint_auth_method: none", "client_secret:"),
        ("    grant_types: [authorization_code, implicit]\n", "clients[0].grant_types[1]",
         "'implicit' is not one of", "grant_types"),
        ("    grant_types: [refresh_token]\n", "clients[0].grant_types",
         "must include authorization_code", "grant_types"),
        ("    subject: email\n", "clients[0].subject", "not one of: openid, unionid, pairwise",
         "subject"),
        ("    email: real\n", "clients[0].email", "not one of: omit, synthetic", "email"),
        ("    upstream_check: never\n", "clients[0].upstream_check", "strict, cached, off",
         "upstream_check"),
        ("    access_token_format: jws\n", "clients[0].access_token_format", "opaque, jwt",
         "access_token_format"),
        ("    id_token_signed_response_alg: none\n", "clients[0].id_token_signed_response_alg",
         "not one of the published algorithms", "id_token_signed"),
        ("    id_token_signed_response_alg: ES256\n", "clients[0].id_token_signed_response_alg",
         "(RS256; see keys.algorithms)", "id_token_signed"),
        ("    expose_qq_ids: 1\n", "clients[0].expose_qq_ids", "true or false", "expose"),
        ("    redirect_uris: http://127.0.0.1/cb\n", "clients[0].redirect_uris",
         "must be a list", "redirect_uris: http"),
        ("    post_logout_redirect_uris: [1]\n", "clients[0].post_logout_redirect_uris[0]",
         "must be a string", "post_logout"),
        ("    client_id: 'has space'\n", "clients[0].client_id", "printable ASCII", None),
    ],
)  # fmt: skip
def test_client_option_errors(
    tmp_path: Path, client_lines: str, path: str, fragment: str, needle: str | None
) -> None:
    base = DEV.replace("    redirect_uris: [http://127.0.0.1:9000/callback]\n", "")
    if not client_lines.startswith("    redirect_uris"):
        base += "    redirect_uris: [http://127.0.0.1:9000/callback]\n"
    if "client_id:" in client_lines:
        text = base.replace("  - client_id: demo\n", "  - " + client_lines.lstrip())
        needle = "has space"
    else:
        text = base + client_lines
    error = load_error(tmp_path, text)
    assert_error(error, tmp_path, path, fragment, line_of(text, needle or ""))


def test_duplicate_client_ids(tmp_path: Path) -> None:
    text = DEV + (
        "  - client_id: other\n    client_secret: s\n    redirect_uris: [http://localhost/cb]\n"
        "  - client_id: demo\n    client_secret: s\n    redirect_uris: [http://localhost/cb]\n"
    )
    error = load_error(tmp_path, text)
    line = text.splitlines().index("  - client_id: demo", 9) + 1
    assert_error(error, tmp_path, "clients[2].client_id", "already used by clients[0]", line)


# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("https://app.example.com/cb#frag", "fragment"),
        ("https://app.example.com/cb#", "fragment"),
        ("https://*.example.com/cb", "wildcards"),
        ("https://app.example.com/*", "wildcards"),
        ("javascript:alert(1)", "absolute https:// URL"),
        ("data:text/html,hi", "absolute https:// URL"),
        ("ftp://app.example.com/cb", "absolute https:// URL"),
        ("/relative/cb", "absolute https:// URL"),
        ("app.example.com/cb", "absolute https:// URL"),
        ("http://app.example.com/cb", "must use https://"),
        ("http://192.168.1.10/cb", "must use https://"),
        ("http://localhost.evil.com/cb", "must use https://"),
        ("https:///cb", "has no host"),
        ("https://user:pw@app.example.com/cb", "user info"),
        ("https://app.example.com/cb?code=1", "must not carry code"),
        ("https://app.example.com/cb?a=1&state=x", "must not carry state"),
        ("https://app.example.com/cb?iss", "must not carry iss"),
        ("https://app.example.com/c b", "whitespace"),
        ("https://app.example.com:99999/cb", "not a valid URL"),
    ],
)
@pytest.mark.parametrize("base", [DEV, PROD], ids=["development", "production"])
def test_redirect_uri_rules(tmp_path: Path, base: str, uri: str, fragment: str) -> None:
    text = base.replace("redirect_uris: [", f"redirect_uris:\n      - '{uri}'\n      - ", 1)
    text = text.replace("      - http", "      - 'http").replace("      - https", "      - 'https")
    text = text.replace("callback]", "callback'").replace("generic_oauth]", "generic_oauth'")
    error = load_error(tmp_path, text)
    assert_error(
        error, tmp_path, "clients[0].redirect_uris[0]", fragment, line_of(text, f"- '{uri}'")
    )


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:9000/cb",
        "http://127.8.9.10/cb",
        "http://[::1]:3000/cb",
        "http://localhost:3000/cb",
        "https://app.example.com/cb?tenant=a",
        "https://app.example.com:8443/cb",
    ],
)
@pytest.mark.parametrize("base", [DEV, PROD], ids=["development", "production"])
def test_accepted_redirect_uris(tmp_path: Path, base: str, uri: str) -> None:
    text = base.replace("redirect_uris: [", f"redirect_uris: ['{uri}', ")
    config = load(tmp_path, text)
    assert config.clients[0].redirect_uris[0] == uri


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("post_logout_redirect_uris", "['http://app.example.com/bye']"),
        ("backchannel_logout_uri", "'https://app.example.com/bcl#x'"),
        ("jwks_uri", "'javascript:alert(1)'"),
        ("sector_identifier_uri", "'http://app.example.com/s.json'"),
    ],
)
def test_other_client_uris_follow_the_same_rules(tmp_path: Path, key: str, value: str) -> None:
    text = PROD + f"    {key}: {value}\n"
    error = load_error(tmp_path, text)
    assert error.path.startswith(f"clients[0].{key}")
    assert error.line == line_of(text, key)


def test_pairwise_with_several_redirect_hosts_needs_a_sector_identifier(tmp_path: Path) -> None:
    text = PROD.replace("generic_oauth]", "generic_oauth, https://other.example.com/cb]")
    error = load_error(tmp_path, text + "    subject: pairwise\n")
    assert error.path == "clients[0].sector_identifier_uri" and "several hosts" in error.problem
    text += "    subject: pairwise\n    sector_identifier_uri: https://grafana.example.com/s.json\n"
    assert load(tmp_path, text).clients[0].subject == "pairwise"


# --------------------------------------------------------------------------- issuer


@pytest.mark.parametrize(
    ("issuer", "fragment"),
    [
        ("https://login.example.com/", "must not end with '/'"),
        ("http://127.0.0.1:8000/", "must not end with '/'"),
        ("https://login.example.com?x=1", "must not have a query"),
        ("https://login.example.com#top", "fragment"),
        ("http://login.example.com", "must use https://"),
        ("ftp://login.example.com", "absolute https:// URL"),
        ("login.example.com", "absolute https:// URL"),
        ("https://user@login.example.com", "user info"),
    ],
)
def test_issuer_rules(tmp_path: Path, issuer: str, fragment: str) -> None:
    text = PROD.replace("issuer: https://login.example.com", f"issuer: '{issuer}'")
    assert_error(load_error(tmp_path, text), tmp_path, "issuer", fragment, 1)


@pytest.mark.parametrize(
    ("issuer", "development"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://127.0.0.2", True),
        ("https://127.0.0.1", True),
        ("http://[::1]:8000", True),
        ("http://localhost:8000/broker", True),
        ("https://login.example.com", False),
        ("https://10.0.0.1", False),
        ("https://localhost.example.com", False),
    ],
)
def test_is_development(tmp_path: Path, issuer: str, development: bool) -> None:
    text = (DEV if development else PROD).replace(
        DEV.splitlines()[0] if development else PROD.splitlines()[0], f"issuer: '{issuer}'"
    )
    config = load(tmp_path, text)
    assert config.is_development is development
    assert is_loopback_url(issuer) is development


# --------------------------------------------------------------------------- interpolation


def test_interpolation_set_default_and_empty(tmp_path: Path) -> None:
    text = DEV + (
        "server:\n  host: ${HOST:-127.0.0.1}\n  port: ${PORT:-9000}\n  threads: ${THREADS:-}\n"
        "rate_limits: {enabled: '${RL:-true}'}\n"
        "claims:\n  email_domain: 'users.${DOMAIN}'\n"
        "secret_key: ${SK:-}\n"
        "pairwise_salt: ${SALT:-}\n"
    )
    config = load(tmp_path, text, {**ENV, "DOMAIN": "example.org", "RL": "false", "PORT": ""})
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 9000  # ${PORT:-9000} with PORT empty → default
    assert config.server.threads == 32  # ${THREADS:-} → not configured → default
    assert config.rate_limits.enabled is False
    assert config.claims.email_domain == "users.example.org"
    assert config.secret_key is None and config.pairwise_salt is None

    config = load(tmp_path, text, {**ENV, "DOMAIN": "x.org", "PORT": "8123", "SK": "dev-key"})
    assert config.server.port == 8123 and config.secret_key == "dev-key"


def test_unset_variable_names_the_variable_the_key_and_the_line(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "DEMO_CLIENT_SECRET"}
    error = load_error(tmp_path, DEV, env)
    assert_error(
        error,
        tmp_path,
        "clients[0].client_secret",
        "environment variable DEMO_CLIENT_SECRET is not set",
        line_of(DEV, "client_secret"),
    )


def test_unset_variable_in_a_list_item(tmp_path: Path) -> None:
    text = DEV.replace("[http://127.0.0.1:9000/callback]", "['${RP_URL}/callback']")
    error = load_error(tmp_path, text)
    assert error.path == "clients[0].redirect_uris[0]" and "RP_URL is not set" in error.problem
    config = load(tmp_path, text, {**ENV, "RP_URL": "http://localhost:7000"})
    assert config.clients[0].redirect_uris == ("http://localhost:7000/callback",)


def test_variable_set_to_empty_for_a_required_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, DEV, {**ENV, "QQ_APP_KEY": ""})
    assert_error(error, tmp_path, "upstream.qq.app_key", "must not be empty", 5)


def test_interpolated_values_are_not_interpolated_again(tmp_path: Path) -> None:
    config = load(tmp_path, DEV, {**ENV, "QQ_APP_KEY": "a${NOPE}b"})
    assert config.upstream.qq.app_key == "a${NOPE}b"


def test_numeric_looking_environment_values_stay_strings(tmp_path: Path) -> None:
    config = load(tmp_path, DEV, {**ENV, "QQ_APP_KEY": "123456", "DEMO_CLIENT_SECRET": "0755"})
    assert config.upstream.qq.app_key == "123456"
    assert config.clients[0].client_secret == "0755"


@pytest.mark.parametrize("reference", ["${", "${QQ_APP_KEY", "${1BAD}", "${A:default}", "${}"])
def test_malformed_references(tmp_path: Path, reference: str) -> None:
    text = DEV.replace("app_key: ${QQ_APP_KEY}", f"app_key: 'x{reference}'")
    error = load_error(tmp_path, text)
    assert_error(error, tmp_path, "upstream.qq.app_key", "malformed variable reference", 5)


def test_non_interpolated_string_for_an_int_is_a_type_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, DEV + "server: {port: '8000'}\n")
    assert error.path == "server.port" and "must be an integer, got a string" in error.problem


# --------------------------------------------------------------------------- production guards


def test_production_example_loads(tmp_path: Path) -> None:
    config = load(tmp_path, PROD)
    assert not config.is_development
    assert config.upstream.qq.base_url == "https://graph.qq.com"


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:9100", "https://graph.qq.com.evil.example", "https://staging.example.com"],
)
def test_production_requires_the_real_qq_endpoint(tmp_path: Path, base_url: str) -> None:
    text = PROD.replace("    app_key:", f"    base_url: {base_url}\n    app_key:")
    error = load_error(tmp_path, text)
    assert_error(error, tmp_path, "upstream.qq.base_url", "must use https://graph.qq.com", 5)


def test_production_staging_override_still_needs_https(tmp_path: Path) -> None:
    text = PROD.replace(
        "    app_key:",
        "    base_url: https://qq-staging.example.com\n    allow_staging_base_url: true\n"
        "    app_key:",
    )
    assert load(tmp_path, text).upstream.qq.base_url == "https://qq-staging.example.com"
    error = load_error(tmp_path, text.replace("https://qq-staging", "http://qq-staging"))
    assert error.path == "upstream.qq.base_url" and "https://" in error.problem


def test_development_may_use_the_local_emulator_but_not_remote_http(tmp_path: Path) -> None:
    text = DEV.replace("    app_key:", "    base_url: http://127.0.0.1:9100/\n    app_key:")
    assert load(tmp_path, text).upstream.qq.base_url == "http://127.0.0.1:9100"
    error = load_error(tmp_path, text.replace("127.0.0.1:9100", "qq-emulator.lan:9100"))
    assert error.path == "upstream.qq.base_url" and "must use https://" in error.problem


@pytest.mark.parametrize(
    "app_id", ["abc", "'10100 0001'", "'-1'", "'${QQ_APP_KEY}'", "1.5"], ids=str
)
def test_app_id_must_be_digits(tmp_path: Path, app_id: str) -> None:
    text = DEV.replace("app_id: ${QQ_APP_ID}", f"app_id: {app_id}")
    error = load_error(tmp_path, text)
    assert error.path == "upstream.qq.app_id" and error.line == 4
    assert APP_KEY not in str(error)


@pytest.mark.parametrize(
    "secret_key",
    [
        "changeme",
        "dev",
        "secret",
        "short-but-random-Zq8",
        secrets.token_hex(16),  # 32 characters, but only 128 bits
        secrets.token_urlsafe(24),  # 32 characters of base64url: 192 bits
        "please-changeme-to-a-long-random-value-0123456789",
        "your-secret-key-here-make-it-long-and-random-abcdef",
        "a" * 64,
    ],
)
def test_production_refuses_weak_or_sample_secret_keys(tmp_path: Path, secret_key: str) -> None:
    text = PROD + "secret_key: ${SK}\n"
    error = load_error(tmp_path, text, {**ENV, "SK": secret_key})
    assert_error(error, tmp_path, "secret_key", "", line_of(text, "secret_key"))
    assert "leave it empty" in error.problem or "sample" in error.problem
    if len(secret_key) >= 8:  # "secret" is also a word of the hint itself
        assert secret_key not in str(error)


@pytest.mark.parametrize(
    "secret_key",
    [secrets.token_urlsafe(32), secrets.token_hex(32), secrets.token_urlsafe(64), ""],
    ids=["urlsafe32", "hex32", "urlsafe64", "empty"],
)
def test_production_accepts_strong_or_absent_secret_keys(tmp_path: Path, secret_key: str) -> None:
    config = load(tmp_path, PROD + "secret_key: ${SK:-}\n", {**ENV, "SK": secret_key})
    assert config.secret_key == (secret_key or None)


def test_development_accepts_any_secret_key(tmp_path: Path) -> None:
    assert load(tmp_path, DEV + "secret_key: dev\n").secret_key == "dev"


@pytest.mark.parametrize(
    ("client_lines", "fragment", "production_only"),
    [
        ("    client_secret: short-SECRET\n", "too short for a production issuer", True),
        ("    client_secret: ''\n", "is required for client_secret_basic", False),
        ("    token_endpoint_auth_method: client_secret_post\n", "required for client_secret_post",
         False),
    ],
)  # fmt: skip
def test_client_secret_rules(
    tmp_path: Path, client_lines: str, fragment: str, production_only: bool
) -> None:
    def variant(base: str) -> str:
        head, _, _ = base.partition("    client_secret:")
        uris = base.split("\n")[-2]
        return head + client_lines + uris + "\n"

    prod_text = variant(PROD)
    error = load_error(tmp_path, prod_text)
    assert error.path == "clients[0].client_secret" and fragment in error.problem
    dev_text = variant(DEV)
    if production_only:
        assert load(tmp_path, dev_text).clients[0].client_secret == "short-SECRET"
    else:
        assert fragment in load_error(tmp_path, dev_text).problem


def test_private_key_jwt_rules(tmp_path: Path) -> None:
    base = PROD.replace(
        "    client_secret: ${PROD_CLIENT_SECRET}\n",
        "    token_endpoint_auth_method: private_key_jwt\n",
    )
    error = load_error(tmp_path, base)
    assert error.path == "clients[0].token_endpoint_auth_method"
    assert "needs the client's jwks or jwks_uri" in error.problem

    leaked = "d-SECRET-private-exponent"
    text = base + (
        "    jwks:\n      keys:\n        - {kty: RSA, n: abc, e: AQAB, d: " + leaked + "}\n"
    )
    error = load_error(tmp_path, text)
    assert error.path == "clients[0].jwks.keys[0]" and "private key material (d)" in error.problem
    assert leaked not in str(error) and error.line == line_of(text, "kty: RSA")

    both = base + (
        "    jwks: {keys: [{kty: EC, crv: P-256, x: a, y: b}]}\n"
        "    jwks_uri: https://grafana.example.com/jwks\n"
    )
    assert "not both" in load_error(tmp_path, both).problem

    with_secret = base + "    client_secret: x\n    jwks_uri: https://grafana.example.com/jwks\n"
    assert load_error(tmp_path, with_secret).path == "clients[0].client_secret"


def test_keys_algorithms_defaults_and_rs256_always_published(tmp_path: Path) -> None:
    assert load(tmp_path, DEV + "keys: {algorithm: ES256}\n").keys.algorithms == (
        "RS256",
        "ES256",
    )
    config = load(tmp_path, DEV + "keys: {algorithms: [EdDSA]}\n")
    assert config.keys.algorithms == ("RS256", "EdDSA") and config.keys.algorithm == "RS256"
    config = load(tmp_path, DEV + "keys: {algorithm: EdDSA, algorithms: [EdDSA, RS256]}\n")
    assert config.keys.algorithms == ("RS256", "EdDSA") and config.keys.algorithm == "EdDSA"


def test_upstream_subject_cannot_be_pairwise(tmp_path: Path) -> None:
    text = DEV.replace("    app_key:", "    subject: pairwise\n    app_key:")
    error = load_error(tmp_path, text)
    assert_error(error, tmp_path, "upstream.qq.subject", "not one of: openid, unionid", 5)


# --------------------------------------------------------------------------- secrets in messages


@pytest.mark.parametrize(
    ("text", "env"),
    [
        # wrong types on secret keys
        (DEV.replace("app_key: ${QQ_APP_KEY}", "app_key: [${QQ_APP_KEY}]"), ENV),
        (DEV.replace("client_secret: ${DEMO_CLIENT_SECRET}", "client_secret: {a: 1}"), ENV),
        # secrets that fail a rule
        (PROD + "secret_key: ${SK}\n", {**ENV, "SK": "changeme-SECRET-value"}),
        (PROD + "pairwise_salt: ${SALT}\n", {**ENV, "SALT": "SECRET-salt"}),
        (PROD, {**ENV, "PROD_CLIENT_SECRET": "SECRET-short"}),
        (DEV.replace("    client_secret",
                     "    token_endpoint_auth_method: none\n    client_secret"), ENV),
        # secret-bearing URLs that fail
        (DEV + "storage: {url: 'postgres-SECRET-password'}\n", ENV),
        (DEV + "rate_limits: {storage: 'redis-SECRET-password'}\n", ENV),
        # an error elsewhere while secrets are loaded
        (DEV + "lifetimes: {code: 10000}\n", ENV),
        (DEV.replace("app_id: ${QQ_APP_ID}", "app_id: ${QQ_APP_KEY}"), ENV),
        # malformed reference in a secret
        (DEV.replace("app_key: ${QQ_APP_KEY}", "app_key: 'SECRET-literal${'"), ENV),
    ],
)  # fmt: skip
def test_secrets_never_appear_in_error_messages(
    tmp_path: Path, text: str, env: dict[str, str]
) -> None:
    error = load_error(tmp_path, text, env)
    message = str(error)
    assert "SECRET" not in message, message
    for value in env.values():
        if "SECRET" in value:
            assert value not in message


def test_yaml_syntax_error_inside_a_secret_does_not_echo_it(tmp_path: Path) -> None:
    text = DEV + 'secret_key: "unterminated-SECRET-value\n'
    error = load_error(tmp_path, text)
    assert "SECRET" not in str(error) and "malformed YAML" in str(error)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("app_key: ${QQ_APP_KEY}", "app_key: 987654321987654321"),
        ("client_secret: ${DEMO_CLIENT_SECRET}", "client_secret: 987654321987654321"),
        ("client_secret: ${DEMO_CLIENT_SECRET}", "client_secret: [987654321987654321]"),
        (
            "issuer: http://127.0.0.1:8000",
            "issuer: http://127.0.0.1:8000\nsecret_key: 9876543219.87",
        ),
    ],
)
def test_wrongly_typed_literal_secrets_are_not_echoed(tmp_path: Path, old: str, new: str) -> None:
    error = load_error(tmp_path, DEV.replace(old, new))
    assert "must be a string" in error.problem
    assert "987654321" not in str(error) and "9876543219" not in str(error)
