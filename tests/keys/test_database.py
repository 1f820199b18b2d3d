"""keys.storage: database: private keys and secrets sealed with the KEK (AES-256-GCM,
bound to what they are); a wrong KEK is a clear error, never a new key."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.keys import KeyDecryptionError, KeyRing, KeyStoreError
from broker.keys.crypto import KeyEncryptionKey
from broker.storage.base import SigningKeyRecord
from tests.keys.conftest import Cluster, new_kek


@pytest.fixture
def db(tmp_path: Path) -> Cluster:
    return Cluster("database", tmp_path)


def test_stored_private_keys_are_sealed_not_pem(db: Cluster) -> None:
    ring = db.ring()
    records = db.store().list_signing_keys()
    assert {r.kid for r in records} == {k.kid for k in ring.signing_keys}
    for record in records:
        assert record.private_key.startswith("v1.") and record.private_key.count(".") == 2
        assert "PRIVATE KEY" not in record.private_key
        context = f"signing-key:{record.alg}:{record.kid}"
        pem = KeyEncryptionKey.from_config(db.kek).open(record.private_key, context, "k")
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        with pytest.raises(KeyDecryptionError):
            KeyEncryptionKey.from_config(new_kek()).open(record.private_key, context, "k")


def test_secrets_are_sealed_too(db: Cluster) -> None:
    ring = db.ring()
    value = ring.shared_secret("pairwise_salt")
    stored = db.store().get_or_create_secret("pairwise_salt", "ignored")
    assert stored.startswith("v1.") and value.hex() not in stored
    kek = KeyEncryptionKey.from_config(db.kek)
    assert kek.open(stored, "secret:pairwise_salt", "s") == value


def test_a_wrong_kek_is_one_clear_error_and_creates_nothing(db: Cluster) -> None:
    db.ring()
    before = db.store().list_signing_keys()
    other = new_kek()
    with pytest.raises(KeyDecryptionError) as info:
        db.ring(kek=other)
    message = str(info.value)
    assert message.startswith("keys.encryption_key does not decrypt the stored keys: ")
    assert "\n" not in message and other not in message and db.kek not in message
    assert db.store().list_signing_keys() == before


def test_a_wrong_kek_is_refused_for_secrets_even_without_keys(db: Cluster) -> None:
    db.ring(algorithms=("RS256",)).shared_secret("secret_key")
    for record in db.store().list_signing_keys():
        db.store().retire_signing_key(record.kid, 0)  # withdrawn long ago: never loaded
    ring = db.ring(kek=new_kek(), create=False, algorithms=("RS256",))
    with pytest.raises(KeyDecryptionError, match="secret secret_key"):
        ring.shared_secret("secret_key")


def test_a_sealed_key_moved_to_another_row_does_not_open(db: Cluster) -> None:
    """The associated data binds a ciphertext to its kid and alg."""
    ring = db.ring(algorithms=("RS256",))
    record = db.store().list_signing_keys()[0]
    db.store().add_signing_key(
        SigningKeyRecord(
            kid="A" * 43,
            alg="RS256",
            private_key=record.private_key,
            created_at=record.created_at,
            activates_at=record.activates_at + 1,
        )
    )
    with pytest.raises(KeyDecryptionError, match="signing key AAAA"):
        db.ring(algorithms=("RS256",))
    assert ring.signing_key("RS256").kid == record.kid


def test_an_unknown_format_version_is_named(db: Cluster) -> None:
    db.store().add_signing_key(SigningKeyRecord("k" * 43, "RS256", "v9.abc.def", 0, 0))
    with pytest.raises(KeyStoreError, match="unknown format 'v9'"):
        db.ring(algorithms=("RS256",))


def test_kek_repr_hides_the_key() -> None:
    kek = new_kek()
    assert kek not in repr(KeyEncryptionKey.from_config(kek))


def test_database_mode_without_a_store_is_a_programming_error(db: Cluster) -> None:
    from tests.keys.conftest import LIFETIMES

    with pytest.raises(ValueError, match="needs a store"):
        KeyRing.from_config(db.keys_config(), LIFETIMES, None)
