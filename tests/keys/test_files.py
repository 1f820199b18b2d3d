"""keys.storage: files: keys from before rotation keep working, rotated keys get their
own 0600 files, and the schedule lives in keys.json, written atomically under the lock."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from broker.keys import MANIFEST_NAME, KeyFileError, KeyRing, key_path
from tests.keys.conftest import PUBLISH_AHEAD, Cluster


@pytest.fixture
def files(tmp_path: Path) -> Cluster:
    return Cluster("files", tmp_path)


def manifest(cluster: Cluster) -> list[dict[str, object]]:
    document = json.loads((cluster.base / "keys" / MANIFEST_NAME).read_text())
    assert document["version"] == 1
    entries: list[dict[str, object]] = document["keys"]
    return entries


def test_a_key_from_before_rotation_is_active_since_forever(files: Cluster) -> None:
    directory = files.base / "keys"
    legacy = KeyRing.load_or_create(directory, ["RS256"]).signing_key("RS256").kid
    (directory / MANIFEST_NAME).unlink()  # as an older version left the directory

    ring = files.ring(algorithms=("RS256",))
    assert ring.signing_key("RS256").kid == legacy
    status = ring.statuses()[0]
    assert (status.key.created_at, status.key.activates_at, status.state) == (0, 0, "active")
    assert not (directory / MANIFEST_NAME).exists()  # loading writes nothing

    rotation = ring.rotate()[0]
    entries = manifest(files)
    assert entries[0] == {"file": "rs256.pem", "kid": legacy, "alg": "RS256", "created_at": 0,
                          "activates_at": 0, "retired_at": None}  # fmt: skip
    new_file = directory / str(entries[1]["file"])
    now = int(files.clock())
    assert new_file.name == f"rs256-{now}-{rotation.kid[:8].lower()}.pem"
    assert entries[1]["activates_at"] == now + PUBLISH_AHEAD
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / MANIFEST_NAME).stat().st_mode) == 0o600
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_first_keys_keep_their_usual_file_names(files: Cluster) -> None:
    ring = files.ring()
    directory = files.base / "keys"
    assert ring.signing_key("RS256").path == key_path(directory, "RS256")
    assert ring.signing_key("ES256").path == key_path(directory, "ES256")
    assert {e["file"] for e in manifest(files)} == {"rs256.pem", "es256.pem"}


def test_a_file_without_a_manifest_entry_is_ignored(files: Cluster) -> None:
    """A crash between writing a rotated key and its manifest entry leaves such a file."""
    ring = files.ring(algorithms=("RS256",))
    stray = files.base / "keys" / "rs256-123-abcdefgh.pem"
    stray.write_bytes(key_path(files.base / "keys", "RS256").read_bytes()[:10])
    files.clock.advance(ring.policy.refresh_interval)
    assert len(ring.jwks()["keys"]) == 1
    assert len(files.ring(algorithms=("RS256",)).jwks()["keys"]) == 1


def test_a_replaced_key_file_is_an_error_not_a_silent_new_key(files: Cluster) -> None:
    files.ring(algorithms=("RS256",))
    other = KeyRing.load_or_create(files.base / "other", ["RS256"])
    path = key_path(files.base / "keys", "RS256")
    path.write_bytes(key_path(files.base / "other", "RS256").read_bytes())
    with pytest.raises(KeyFileError) as info:
        files.ring(algorithms=("RS256",))
    assert str(info.value).startswith(f"{path}: holds key {other.signing_key('RS256').kid}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{", "is not valid JSON"),
        ('{"version": 2, "keys": []}', "is not a version 1 key manifest"),
        ('{"version": 1}', "has no 'keys' list"),
        ('{"version": 1, "keys": [{"file": "../x.pem", "kid": "a", "alg": "RS256", '
         '"created_at": 0, "activates_at": 0}]}', "keys[0]: 'file' must be"),
        ('{"version": 1, "keys": [{"file": "a.pem", "kid": "a", "alg": "RS256", '
         '"created_at": "0", "activates_at": 0}]}', "keys[0]: 'created_at' must be"),
    ],
)  # fmt: skip
def test_a_corrupt_manifest_is_an_error_and_is_left_alone(
    files: Cluster, content: str, problem: str
) -> None:
    directory = files.base / "keys"
    directory.mkdir()
    (directory / MANIFEST_NAME).write_text(content)
    with pytest.raises(KeyFileError) as info:
        files.ring()
    assert str(info.value).startswith(f"{directory / MANIFEST_NAME}: ")
    assert problem in str(info.value)
    assert (directory / MANIFEST_NAME).read_text() == content
    assert not key_path(directory, "RS256").exists()


def test_retiring_a_key_from_before_rotation_pins_it_in_the_manifest(files: Cluster) -> None:
    directory = files.base / "keys"
    legacy = KeyRing.load_or_create(directory, ["RS256"]).signing_key("RS256").kid
    (directory / MANIFEST_NAME).unlink()
    ring = files.ring(algorithms=("RS256",))
    done = ring.retire(legacy, force=True)
    assert done.replacement is not None
    entries = {e["kid"]: e for e in manifest(files)}
    assert entries[legacy]["retired_at"] == int(files.clock())
    assert entries[done.replacement.kid]["file"] != "rs256.pem"
    assert files.ring(algorithms=("RS256",)).signing_key("RS256").kid == done.replacement.kid
