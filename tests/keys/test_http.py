"""/jwks.json as relying parties fetch it: Cache-Control max-age from the config, and
every instance (one app per instance, sharing keys) serving the same keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from broker.app import create_app
from tests.conftest import broker_config
from tests.keys.conftest import new_kek

ISSUER = "http://127.0.0.1:8765"


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    made: list[Flask] = []
    yield made
    for app in made:
        app.extensions["qq_oidc_broker.housekeeper"].stop()


def instance(apps: list[Flask], base: Path, keys: dict[str, Any]) -> Flask:
    config = broker_config(base, ISSUER, "http://127.0.0.1:9", "k" * 32, keys=keys)
    app = create_app(config)
    apps.append(app)
    return app


def jwks(app: Flask) -> tuple[dict[str, Any], str]:
    response = app.test_client().get("/jwks.json", base_url=ISSUER)
    assert response.status_code == 200
    return response.get_json(), response.headers["Cache-Control"]


@pytest.mark.parametrize("max_age", [1, 120, 3600])
def test_jwks_max_age_follows_the_config(apps: list[Flask], tmp_path: Path, max_age: int) -> None:
    keys = {
        "dir": "keys",
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "jwks_max_age": max_age,
        "rotation": {"interval": 0},
    }
    _, cache_control = jwks(instance(apps, tmp_path, keys))
    assert cache_control == f"public, max-age={max_age}"


@pytest.mark.parametrize("storage", ["files", "database"])
def test_instances_sharing_keys_serve_the_same_jwks_and_sign_alike(
    apps: list[Flask], tmp_path: Path, storage: str
) -> None:
    algorithms = ["RS256", "ES256", "EdDSA"]
    keys: dict[str, Any] = {"dir": "keys", "algorithms": algorithms, "storage": storage}
    if storage == "database":
        keys["encryption_key"] = new_kek()
    first, second = instance(apps, tmp_path, keys), instance(apps, tmp_path, keys)
    assert jwks(first) == jwks(second)
    assert len(jwks(first)[0]["keys"]) == 3
    rings = [app.extensions["qq_oidc_broker"].ctx.keyring for app in (first, second)]
    assert rings[0].signing_key("ES256").kid == rings[1].signing_key("ES256").kid
    if storage == "database":
        assert not (tmp_path / "keys").exists()  # nothing on disk in database mode
