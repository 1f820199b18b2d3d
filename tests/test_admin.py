"""``clients``, ``tokens revoke`` and ``users show`` as an operator runs them: real processes
against a real database, and against the database of a running broker, which must follow
without a restart (docs/admin.md)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from broker.oidc.registry import CLIENT_CACHE_SECONDS
from broker.storage import ClientRecord, SQLStore
from tests.conftest import APP_ID, RP, Pair, client_definitions, start_pair
from tests.flows import authorize_url
from tests.pg import require_pg
from tests.scale.cluster import Cluster, Login, RegisteredClient, TokenSet
from tests.security.conftest import U1, full_login, refresh, userinfo

REPO = Path(__file__).resolve().parent.parent
#: Long enough for every instance's client cache to have expired, with a margin.
FOLLOW_SECONDS = CLIENT_CACHE_SECONDS + 3

CONFIG = """\
issuer: {issuer}
storage: {{url: "sqlite:///broker.sqlite3"}}
upstream:
  qq: {{app_id: "101000001", app_key: "0123456789abcdef0123456789abcdef"}}
clients:
  - client_id: conf-rp
    client_secret: conf-secret-for-tests-only-0123456789
    redirect_uris: [http://127.0.0.1:9000/callback]
"""


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``qq-oidc-broker ARGS --config CONFIG`` in its own process."""
    env = {k: v for k, v in os.environ.items() if k != "BROKER_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "broker", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=60,
    )


def ok_json(config: Path, *args: str) -> Any:
    result = run(config, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_error_line(result: subprocess.CompletedProcess[str], status: int = 2) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A development config with one config client, and its (migrated) SQLite database."""
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(issuer="http://127.0.0.1:8000"), encoding="utf-8")
    store = SQLStore(f"sqlite:///{tmp_path / 'broker.sqlite3'}")
    store.create_schema()
    store.close()
    return path


def database_rows(config: Path, client_id: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(config.parent / "broker.sqlite3") as db:
        return db.execute(
            "SELECT secret_digest, metadata, source FROM clients WHERE client_id = ?", (client_id,)
        ).fetchall()


# --------------------------------------------------------------------------- clients


def test_add_prints_the_secret_once_and_stores_only_its_digest(config: Path) -> None:
    result = run(config, "clients", "add", "cli-rp", "--redirect-uri", "https://rp.example/cb")
    assert result.returncode == 0, result.stderr
    secret = result.stdout.split("client_secret: ")[1].strip()
    assert len(secret) >= 43  # 256 bits, base64url
    assert "shown only this once" in result.stderr and secret not in result.stderr
    [(stored_digest, metadata, source)] = database_rows(config, "cli-rp")
    assert (stored_digest, source) == (sha256(secret), "cli")
    assert json.loads(metadata)["redirect_uris"] == ["https://rp.example/cb"]
    assert secret.encode() not in (config.parent / "broker.sqlite3").read_bytes()
    for args in (("clients", "list"), ("clients", "show", "cli-rp")):
        for extra in ((), ("--json",)):
            shown = run(config, *args, *extra)
            assert shown.returncode == 0, shown.stderr
            assert secret not in shown.stdout and sha256(secret) not in shown.stdout


def test_add_with_every_option_and_json(config: Path) -> None:
    added = ok_json(
        config,
        "clients", "add", "cli-full",
        "--redirect-uri", "https://a.example/cb",
        "--redirect-uri", "https://a.example/cb2?tenant=1",
        "--auth-method", "client_secret_post",
        "--grant", "refresh_token",
        "--post-logout-redirect-uri", "https://a.example/bye",
        "--backchannel-logout-uri", "https://a.example/bc",
        "--subject", "pairwise",
        "--email", "synthetic",
    )  # fmt: skip
    secret = added.pop("client_secret")
    assert isinstance(secret, str) and len(secret) >= 43
    expected = {
        "client_id": "cli-full",
        "source": "cli",
        "redirect_uris": ["https://a.example/cb", "https://a.example/cb2?tenant=1"],
        "token_endpoint_auth_method": "client_secret_post",
        "grant_types": ["authorization_code", "refresh_token"],
        "post_logout_redirect_uris": ["https://a.example/bye"],
        "backchannel_logout_uri": "https://a.example/bc",
        "subject": "pairwise",
        "email": "synthetic",
        "id_token_signed_response_alg": "RS256",
    }
    assert expected.items() <= added.items()
    shown = ok_json(config, "clients", "show", "cli-full")
    assert shown == added  # the same settings, without the secret
    public = ok_json(
        config, "clients", "add", "cli-public", "--auth-method", "none",
        "--redirect-uri", "http://127.0.0.1:7000/cb",
    )  # fmt: skip
    assert public["client_secret"] is None and public["token_endpoint_auth_method"] == "none"
    [(stored_digest, _, _)] = database_rows(config, "cli-public")
    assert stored_digest is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--redirect-uri", "http://rp.example/cb"], "redirect_uris[0]"),
        (["--redirect-uri", "https://*.rp.example/cb"], "wildcards"),
        (["--redirect-uri", "https://rp.example/cb#x"], "fragment"),
        (["--redirect-uri", "https://rp.example/cb?code=1"], "code"),
        (["--redirect-uri", "https://rp.example/${HOME}"], "${...}"),
        (["--redirect-uri", "https://rp.example/cb", "--post-logout-redirect-uri", "/x"], "post"),
        (
            [
                "--redirect-uri",
                "https://a.example/cb",
                "--redirect-uri",
                "https://b.example/cb",
                "--subject",
                "pairwise",
            ],
            "sector_identifier_uri",
        ),
        (["--redirect-uri", "https://rp.example/cb", "--auth-method", "private_key_jwt"], "choice"),
        (["--redirect-uri", "https://rp.example/cb", "--subject", "email"], "choice"),
        ([], "--redirect-uri"),
    ],
    ids=[
        "http",
        "wildcard",
        "fragment",
        "reserved-param",
        "variable",
        "relative-logout",
        "pairwise-hosts",
        "method",
        "subject",
        "no-redirect",
    ],
)
def test_add_validates_like_the_config(config: Path, args: list[str], expected: str) -> None:
    line = one_error_line(run(config, "clients", "add", "cli-bad", *args))
    assert expected in line
    assert database_rows(config, "cli-bad") == []


def test_add_refuses_an_id_the_config_or_the_database_has(config: Path) -> None:
    line = one_error_line(
        run(config, "clients", "add", "conf-rp", "--redirect-uri", "https://x/cb")
    )
    assert "conf-rp" in line and "config" in line
    assert run(config, "clients", "add", "cli-rp", "--redirect-uri", "https://x/cb").returncode == 0
    line = one_error_line(run(config, "clients", "add", "cli-rp", "--redirect-uri", "https://y/cb"))
    assert "already exists" in line
    [(_, metadata, _)] = database_rows(config, "cli-rp")
    assert json.loads(metadata)["redirect_uris"] == ["https://x/cb"]  # untouched
    line = one_error_line(run(config, "clients", "add", "bad id", "--redirect-uri", "https://x/cb"))
    assert "client_id" in line


def test_production_rules_apply(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(issuer="https://sso.example.com"), encoding="utf-8")
    SQLStore(f"sqlite:///{tmp_path / 'broker.sqlite3'}").create_schema()
    # Loopback http is fine in production too (native apps); other http is not.
    added = ok_json(path, "clients", "add", "native", "--redirect-uri", "http://127.0.0.1/cb")
    assert added["client_id"] == "native"
    line = one_error_line(run(path, "clients", "add", "web", "--redirect-uri", "http://w.example/"))
    assert "https" in line


def test_list_and_show(config: Path) -> None:
    ok_json(config, "clients", "add", "cli-b", "--redirect-uri", "https://b.example/cb")
    ok_json(
        config, "clients", "add", "cli-a", "--auth-method", "none",
        "--redirect-uri", "https://a.example/cb",
    )  # fmt: skip
    assert ok_json(config, "clients", "list") == {
        "clients": [
            {
                "client_id": "conf-rp",
                "source": "config",
                "token_endpoint_auth_method": "client_secret_basic",
                "redirect_uris": ["http://127.0.0.1:9000/callback"],
            },
            {
                "client_id": "cli-a",
                "source": "cli",
                "token_endpoint_auth_method": "none",
                "redirect_uris": ["https://a.example/cb"],
            },
            {
                "client_id": "cli-b",
                "source": "cli",
                "token_endpoint_auth_method": "client_secret_basic",
                "redirect_uris": ["https://b.example/cb"],
            },
        ]
    }
    text = run(config, "clients", "list").stdout.splitlines()
    assert text[0].split() == ["CLIENT_ID", "SOURCE", "AUTH", "METHOD", "REDIRECT", "URIS"]
    assert text[1].split() == [
        "conf-rp",
        "config",
        "client_secret_basic",
        "http://127.0.0.1:9000/callback",
    ]
    conf = ok_json(config, "clients", "show", "conf-rp")
    assert conf["source"] == "config" and "client_secret" not in conf
    assert "conf-secret" not in run(config, "clients", "show", "conf-rp").stdout
    assert "redirect_uris: https://a.example/cb" in run(config, "clients", "show", "cli-a").stdout
    assert "nope" in one_error_line(run(config, "clients", "show", "nope"))


def test_show_says_why_brokers_ignore_a_stored_client(config: Path) -> None:
    """A row that no longer passes the config's rules (written here by hand): exit 1."""
    store = SQLStore(f"sqlite:///{config.parent / 'broker.sqlite3'}")
    metadata = {"redirect_uris": ["http://rp.example/cb"], "token_endpoint_auth_method": "none"}
    record = ClientRecord("cli-old", None, metadata, "cli")
    assert store.add_client(record, int(time.time()))
    store.close()
    result = run(config, "clients", "show", "cli-old", "--json")
    assert result.returncode == 1, result.stderr
    shown = json.loads(result.stdout)
    assert shown["redirect_uris"] == ["http://rp.example/cb"] and "https" in shown["problem"]


def test_rotate_and_remove(config: Path) -> None:
    first = ok_json(config, "clients", "add", "cli-rp", "--redirect-uri", "https://x/cb")
    rotated = ok_json(config, "clients", "rotate-secret", "cli-rp")
    assert set(rotated) == {"client_id", "client_secret"}
    assert rotated["client_secret"] != first["client_secret"]
    assert database_rows(config, "cli-rp")[0][0] == sha256(rotated["client_secret"])
    text = run(config, "clients", "rotate-secret", "cli-rp")
    assert text.returncode == 0 and "shown only this once" in text.stderr
    assert database_rows(config, "cli-rp")[0][0] == sha256(text.stdout.split(": ")[-1].strip())

    removed = ok_json(config, "clients", "remove", "cli-rp")
    assert removed == {
        "client_id": "cli-rp",
        "removed": True,
        "revoked": {"access_tokens": 0, "refresh_tokens": 0, "codes": 0, "sessions": 0},
    }
    assert database_rows(config, "cli-rp") == []
    assert "cli-rp" in one_error_line(run(config, "clients", "remove", "cli-rp"))
    assert "cli-rp" in one_error_line(run(config, "clients", "rotate-secret", "cli-rp"))


def test_config_clients_and_public_clients_are_refused_where_it_makes_no_sense(
    config: Path,
) -> None:
    for action in ("remove", "rotate-secret"):
        line = one_error_line(run(config, "clients", action, "conf-rp"))
        assert "config" in line and "config.yaml" in line
    ok_json(
        config,
        "clients",
        "add",
        "cli-pub",
        "--auth-method",
        "none",
        "--redirect-uri",
        "https://p/cb",
    )
    assert "no secret" in one_error_line(run(config, "clients", "rotate-secret", "cli-pub"))


def test_usage_errors_are_one_line(config: Path) -> None:
    assert "--client" in one_error_line(run(config, "tokens", "revoke"))
    both = run(config, "tokens", "revoke", "--client", "a", "--sub", "b")
    assert "not allowed" in one_error_line(both)
    assert "nobody" in one_error_line(run(config, "users", "show", "nobody"))
    assert "nobody" in one_error_line(run(config, "tokens", "revoke", "--sub", "nobody"))
    unknown = ok_json(config, "tokens", "revoke", "--client", "nobody")
    assert unknown["known_client"] is False and unknown["revoked"]["access_tokens"] == 0


def test_commands_refuse_a_database_without_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(issuer="http://127.0.0.1:8000"), encoding="utf-8")
    for args in (("clients", "list"), ("users", "show", "x"), ("tokens", "revoke", "--sub", "x")):
        assert "db upgrade" in one_error_line(run(path, *args))


# --------------------------------------------------------------------------- a running broker


@dataclass
class Running:
    pair: Pair
    config: Path

    def add(self, client_id: str, *options: str) -> str:
        """``clients add`` a confidential client; the tests' broker handle learns its secret."""
        uri = f"{RP}/{client_id}/callback"
        added = ok_json(self.config, "clients", "add", client_id, "--redirect-uri", uri, *options)
        self.pair.broker.clients[client_id] = {
            "client_secret": added["client_secret"],
            "redirect_uri": uri,
        }
        return str(added["client_secret"])


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A broker and emulator, and a config file for the CLI naming the same database."""
    base = tmp_path_factory.mktemp("admin")
    clients = client_definitions()
    pair = start_pair(base, clients=clients)
    served = pair.broker.config
    data = {
        "issuer": served.issuer,
        "storage": {"url": served.storage.url},
        "keys": {"dir": str(served.keys.dir), "algorithms": list(served.keys.algorithms)},
        "upstream": {
            "qq": {
                "app_id": APP_ID,
                "app_key": served.upstream.qq.app_key,
                "base_url": served.upstream.qq.base_url,
            }
        },
        "rate_limits": {"enabled": False},
        "clients": clients,
    }
    path = base / "cli-config.yaml"
    path.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
    yield Running(pair, path)
    pair.stop()


def eventually(check: Callable[[], bool], seconds: float = FOLLOW_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the running broker did not follow in time"
        time.sleep(0.25)


def test_a_client_added_on_the_command_line_works_at_once_and_follows_every_change(
    running: Running,
) -> None:
    broker, emulator = running.pair.broker, running.pair.emulator
    old_secret = running.add("cli-live", "--grant", "refresh_token")
    login = full_login(broker, emulator, "cli-live", scope="openid profile offline_access")
    assert login.tokens["refresh_token"]  # the ID token was checked for aud cli-live
    assert userinfo(broker, login.tokens["access_token"]).status_code == 200

    new_secret = ok_json(running.config, "clients", "rotate-secret", "cli-live")["client_secret"]
    # The old secret is refused at once (no cache), with the uniform invalid_client.
    stale = refresh(broker, "cli-live", login.tokens["refresh_token"])
    assert stale.status_code == 401 and stale.json()["error"] == "invalid_client"
    broker.clients["cli-live"]["client_secret"] = new_secret
    renewed = refresh(broker, "cli-live", login.tokens["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    assert old_secret != new_secret

    removed = ok_json(running.config, "clients", "remove", "cli-live")
    assert removed["revoked"]["access_tokens"] == 2 and removed["revoked"]["refresh_tokens"] == 1
    # Its tokens and secret die at once; the client itself within the cache time.
    assert userinfo(broker, renewed.json()["access_token"]).status_code == 401
    gone = refresh(broker, "cli-live", renewed.json()["refresh_token"])
    assert gone.status_code == 401 and gone.json()["error"] == "invalid_client"
    url = authorize_url(
        broker.issuer,
        response_type="code",
        client_id="cli-live",
        redirect_uri=f"{RP}/cli-live/callback",
        scope="openid",
        code_challenge="x" * 43,
        code_challenge_method="S256",
    )
    eventually(lambda: requests.get(url, allow_redirects=False, timeout=10).status_code == 400)


def test_discovery_follows_what_stored_clients_need(running: Running) -> None:
    meta = running.pair.broker.metadata
    assert "pairwise" not in meta()["subject_types_supported"]
    running.add("cli-pairwise", "--subject", "pairwise")
    eventually(lambda: "pairwise" in meta()["subject_types_supported"])
    login = full_login(running.pair.broker, running.pair.emulator, "cli-pairwise")
    public = full_login(running.pair.broker, running.pair.emulator, "rp-basic", user=U1)
    assert ok_json(running.config, "users", "show", public.claims["sub"])["matched"] == "openid"
    assert login.claims["sub"] != public.claims["sub"]  # pairwise, not the OpenID


def test_tokens_revoke_sub_and_users_show(running: Running) -> None:
    broker, emulator = running.pair.broker, running.pair.emulator
    running.add("cli-user", "--grant", "refresh_token")
    login = full_login(broker, emulator, "cli-user", scope="openid profile offline_access")
    openid = login.claims["sub"]
    union_login = full_login(broker, emulator, "rp-unionid")  # stores the UnionID too
    unionid = union_login.claims["qq_unionid"]

    shown = ok_json(running.config, "users", "show", openid)
    assert shown["user_id"] == openid and shown["matched"] == "openid"
    assert shown["unionid"] == unionid and shown["profile"]["nickname"] == "张三"
    assert shown["sessions"] >= 1 and shown["updated_at"] > 0
    by_client = {c["client_id"]: c for c in shown["clients"]}
    assert by_client["cli-user"]["access_tokens"] == 1
    assert by_client["cli-user"]["refresh_tokens"] == 1
    assert by_client["rp-unionid"]["access_tokens"] == 1
    text = run(running.config, "users", "show", unionid)
    assert text.returncode == 0 and "张三" in text.stdout and "UnionID" in text.stdout
    for output in (json.dumps(shown), text.stdout):
        for token in (*login.tokens.values(), *union_login.tokens.values()):
            if isinstance(token, str) and len(token) > 20:
                assert token not in output and sha256(token) not in output

    revoked = ok_json(running.config, "tokens", "revoke", "--sub", unionid)
    assert revoked["user_id"] == openid and revoked["matched"] == "unionid"
    assert revoked["revoked"]["access_tokens"] >= 2 and revoked["revoked"]["sessions"] >= 1
    assert userinfo(broker, login.tokens["access_token"]).status_code == 401
    assert userinfo(broker, union_login.tokens["access_token"]).status_code == 401
    dead = refresh(broker, "cli-user", login.tokens["refresh_token"])
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"
    assert ok_json(running.config, "users", "show", openid)["clients"] == []


def test_tokens_revoke_client_leaves_other_clients_alone(running: Running) -> None:
    broker, emulator = running.pair.broker, running.pair.emulator
    running.add("cli-bulk")
    mine = full_login(broker, emulator, "cli-bulk")
    other = full_login(broker, emulator, "rp-basic")
    result = run(running.config, "tokens", "revoke", "--client", "cli-bulk")
    assert result.returncode == 0 and "1 access token(s)" in result.stdout
    assert userinfo(broker, mine.tokens["access_token"]).status_code == 401
    assert userinfo(broker, other.tokens["access_token"]).status_code == 200
    # The client itself still works: a new login gets new tokens.
    again = full_login(broker, emulator, "cli-bulk")
    assert userinfo(broker, again.tokens["access_token"]).status_code == 200


# --------------------------------------------------------------------------- several instances


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two ``serve`` processes on one PostgreSQL, behind a round-robin balancer."""
    require_pg()
    with Cluster(tmp_path_factory.mktemp("admin-cluster"), instances=2) as running:
        yield running


def cluster_json(cluster: Cluster, *args: str) -> Any:
    result = cluster.cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_instance_follows_the_command_line_on_postgresql(cluster: Cluster) -> None:
    uri = f"{cluster.client.redirect_uri}/cli"
    added = cluster_json(
        cluster, "clients", "add", "cli-pg", "--redirect-uri", uri, "--grant", "refresh_token"
    )
    listed = cluster_json(cluster, "clients", "list")["clients"]
    assert [c["client_id"] for c in listed] == ["rp-scale", "cli-pg"]
    # The cluster's relying party is now the client added on the command line.
    cluster.client = RegisteredClient("cli-pg", added["client_secret"], uri, uri)
    login = Login(cluster)
    tokens = login.complete()  # authorize, callback, token: on alternating instances
    cluster.verify(tokens.id_token, cluster.jwks(), nonce=login.nonce)
    assert tokens.refresh_token is not None
    hops = {hop.backend for hop in cluster.balancer.hops()}
    assert len(hops) == 2, "the login did not cross instances"

    rotated = cluster_json(cluster, "clients", "rotate-secret", "cli-pg")["client_secret"]
    for index in range(cluster.count):
        with cluster.balancer.pinned(index):
            stale = cluster.refresh(tokens.refresh_token)
        assert stale.status_code == 401, (index, stale.text)
    cluster.client = RegisteredClient("cli-pg", rotated, uri, uri)
    renewed = TokenSet.from_response(cluster.refresh(tokens.refresh_token))
    assert renewed.refresh_token is not None

    cluster_json(cluster, "clients", "remove", "cli-pg")
    for index in range(cluster.count):
        with cluster.balancer.pinned(index):
            assert cluster.refresh(renewed.refresh_token).status_code == 401
            assert cluster.userinfo(renewed.access_token).status_code == 401

    def refused_everywhere() -> bool:
        path = login.authorize_url().removeprefix(cluster.issuer)
        answers = [
            requests.get(
                f"{broker.url}{path}",
                headers={"Host": cluster.host},
                allow_redirects=False,
                timeout=10,
            ).status_code
            for broker in cluster.brokers
        ]
        return answers == [400] * cluster.count

    eventually(refused_everywhere)
