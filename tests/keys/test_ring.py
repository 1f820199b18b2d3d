"""KeyRing over a shared key store, in both modes (a directory, a database): instances
agree on the JWKS and the signing key, see each other's rotations after one refresh
interval, and never create two keys where one is wanted."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

import pytest

import broker.keys.sources as sources
from broker.keys import (
    KeyRing,
    NoActiveKeyError,
    RetireRefusedError,
    UnknownKeyError,
)
from broker.storage.base import StorageError
from tests.keys.conftest import ALGS, PUBLISH_AHEAD, RETENTION, ROTATION_INTERVAL, Cluster


def active_kids(ring: KeyRing) -> dict[str, str]:
    return {alg: ring.signing_key(alg).kid for alg in ring.algorithms}


def published_kids(ring: KeyRing) -> list[str]:
    return [jwk["kid"] for jwk in ring.jwks()["keys"]]


def run_together(count: int, target: Any) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads released at the same moment."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results[index] = target(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


def test_first_start_makes_one_active_key_per_algorithm(cluster: Cluster) -> None:
    ring = cluster.ring()
    assert ring.algorithms == ALGS
    assert [k.alg for k in ring.signing_keys] == list(ALGS)
    assert published_kids(ring) == [ring.signing_key(alg).kid for alg in ALGS]
    assert [s.state for s in ring.statuses()] == ["active", "active"]
    assert cluster.stored_kids() == sorted((alg, ring.signing_key(alg).kid) for alg in ALGS)


def test_two_instances_agree_and_see_a_rotation_after_the_refresh_interval(
    cluster: Cluster,
) -> None:
    a, b = cluster.ring(), cluster.ring()
    assert a.jwks() == b.jwks() and active_kids(a) == active_kids(b)
    old = active_kids(a)

    rotated = a.rotate()
    assert [r.created for r in rotated] == [True, True]
    new = {r.alg: r.kid for r in rotated}
    assert all(r.activates_at == int(cluster.clock()) + PUBLISH_AHEAD for r in rotated)
    assert set(new.values()) <= set(published_kids(a))
    assert set(new.values()).isdisjoint(published_kids(b))  # b has not re-read yet

    cluster.clock.advance(a.policy.refresh_interval - 1)
    assert set(new.values()).isdisjoint(published_kids(b))
    cluster.clock.advance(1)
    assert a.jwks() == b.jwks()
    assert published_kids(b) == [old["RS256"], new["RS256"], old["ES256"], new["ES256"]]
    assert active_kids(a) == active_kids(b) == old  # published, not signing yet

    cluster.clock.now = rotated[0].activates_at - 1
    assert active_kids(a) == active_kids(b) == old
    cluster.clock.now = rotated[0].activates_at
    assert active_kids(a) == active_kids(b) == new
    assert a.jwks() == b.jwks()
    assert published_kids(b) == [new["RS256"], old["RS256"], new["ES256"], old["ES256"]]

    # The superseded keys still verify tokens until the retention has passed.
    assert {k.kid for k in b.public_keyset()} == set(old.values()) | set(new.values())
    cluster.clock.now = rotated[0].activates_at + RETENTION
    assert a.jwks() == b.jwks()
    assert published_kids(b) == [new["RS256"], new["ES256"]]
    assert {k.kid for k in b.public_keyset()} == set(new.values())


def test_rotation_is_idempotent(cluster: Cluster) -> None:
    ring = cluster.ring()
    first = ring.rotate()
    cluster.clock.advance(5)
    again = cluster.ring().rotate()
    assert [r.created for r in again] == [False, False]
    assert [(r.kid, r.activates_at) for r in again] == [(r.kid, r.activates_at) for r in first]
    assert len(cluster.stored_kids()) == 4


def test_concurrent_first_starts_make_one_key_per_algorithm(cluster: Cluster) -> None:
    rings = run_together(6, lambda _: cluster.ring())
    assert len({tuple(active_kids(r).items()) for r in rings}) == 1
    assert Counter(alg for alg, _ in cluster.stored_kids()) == dict.fromkeys(ALGS, 1)


def test_concurrent_scheduled_rotations_make_one_next_key(cluster: Cluster) -> None:
    rings = [cluster.ring() for _ in range(4)]
    due = int(cluster.clock()) + ROTATION_INTERVAL - PUBLISH_AHEAD
    assert all(ring.rotate_if_due(due - 1) == [] for ring in rings)
    assert len(cluster.stored_kids()) == 2
    cluster.clock.now = due
    done = run_together(len(rings), lambda i: rings[i].rotate_if_due(due))
    created = [r for result in done for r in result]
    assert sorted(r.alg for r in created) == sorted(ALGS)  # one next key per algorithm
    assert Counter(alg for alg, _ in cluster.stored_kids()) == dict.fromkeys(ALGS, 2)
    assert all(r.activates_at == due + PUBLISH_AHEAD for r in created)
    # The new keys start signing exactly one rotation interval after the first ones.
    cluster.clock.now = due + PUBLISH_AHEAD
    assert {active_kids(ring)["RS256"] for ring in rings} == {
        next(r.kid for r in created if r.alg == "RS256")
    }


def test_scheduled_rotation_does_nothing_before_its_time(cluster: Cluster) -> None:
    ring = cluster.ring()
    now = int(cluster.clock())
    for offset in (0, ROTATION_INTERVAL - PUBLISH_AHEAD - 1):
        assert ring.rotate_if_due(now + offset) == []
    assert len(cluster.stored_kids()) == 2


def test_keys_are_parsed_once_however_often_the_list_is_re_read(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    real = sources.parse_pem  # type: ignore[attr-defined]

    def counting(data: bytes, alg: str) -> Any:
        parsed.append(alg)
        return real(data, alg)

    monkeypatch.setattr(sources, "parse_pem", counting)
    a, b = cluster.ring(), cluster.ring()
    before = len(parsed)
    for _ in range(20):
        cluster.clock.advance(a.policy.refresh_interval)
        a.signing_key("RS256"), b.jwks(), b.public_keyset(), a.signing_keys
    assert len(parsed) == before  # zero private-key imports per request
    a.rotate()
    after_rotation = len(parsed)
    cluster.clock.advance(b.policy.refresh_interval)
    b.jwks()
    assert len(parsed) == after_rotation + len(ALGS)  # b parses each new key once
    for _ in range(5):
        cluster.clock.advance(b.policy.refresh_interval)
        b.jwks(), b.signing_key("ES256")
    assert len(parsed) == after_rotation + len(ALGS)


def test_views_are_reused_until_something_changes(cluster: Cluster) -> None:
    ring = cluster.ring()
    keyset = ring.public_keyset()
    cluster.clock.advance(3 * ring.policy.refresh_interval)
    assert ring.public_keyset() is keyset
    assert ring.signing_key("RS256") is ring.signing_key("RS256")


def test_a_failed_re_read_keeps_the_loaded_keys(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ring = cluster.ring()
    kids = active_kids(ring)

    def broken(self: Any) -> Any:
        raise StorageError("database error in list_signing_keys: OperationalError")

    source_class = type(ring._source)
    monkeypatch.setattr(source_class, "read", broken)
    cluster.clock.advance(ring.policy.refresh_interval)
    with caplog.at_level(logging.WARNING, logger="broker.keys"):
        assert active_kids(ring) == kids
    assert "could not re-read the signing keys" in caplog.text


def test_shared_secrets_are_the_same_for_every_instance(cluster: Cluster) -> None:
    a, b = cluster.ring(), cluster.ring()
    assert a.shared_secret("secret_key") == b.shared_secret("secret_key")
    assert len(a.shared_secret("pairwise_salt")) == 32
    assert a.shared_secret("pairwise_salt") != a.shared_secret("secret_key")
    assert (
        run_together(4, lambda _: cluster.ring().shared_secret("upstream_token_key"))
        == [a.shared_secret("upstream_token_key")] * 4
    )


# --------------------------------------------------------------------------- retire


def test_retiring_a_next_key_withdraws_it(cluster: Cluster) -> None:
    ring = cluster.ring()
    pending = ring.rotate()[0]
    done = ring.retire(pending.kid)
    assert not done.already and done.replacement is None
    assert pending.kid not in published_kids(ring)
    assert ring.retire(pending.kid).already
    assert [r.created for r in ring.rotate()] == [True, False]  # RS256 needs a next key again


def test_retiring_the_signing_key_needs_a_next_key_or_force(cluster: Cluster) -> None:
    ring = cluster.ring()
    signing = ring.signing_key("RS256").kid
    with pytest.raises(RetireRefusedError, match="keys rotate"):
        ring.retire(signing)
    assert ring.signing_key("RS256").kid == signing

    pending = ring.rotate()[0]
    done = ring.retire(signing[:10])  # a unique prefix will do
    assert done.key.kid == signing and done.successor is not None
    assert done.successor.kid == pending.kid  # the next key signs early
    assert ring.signing_key("RS256").kid == pending.kid
    assert signing not in published_kids(ring)


def test_forced_retirement_of_the_only_key_makes_a_new_one_at_once(cluster: Cluster) -> None:
    a, b = cluster.ring(), cluster.ring()
    leaked = a.signing_key("ES256").kid
    done = a.retire(leaked, force=True)
    assert done.replacement is not None and done.replacement.activates_at == int(cluster.clock())
    assert a.signing_key("ES256").kid == done.replacement.kid
    cluster.clock.advance(b.policy.refresh_interval)
    assert b.signing_key("ES256").kid == done.replacement.kid
    assert leaked not in published_kids(b)


def test_unknown_kids_are_refused(cluster: Cluster) -> None:
    ring = cluster.ring()
    with pytest.raises(UnknownKeyError, match="no key with kid 'nope'"):
        ring.retire("nope")
    with pytest.raises(UnknownKeyError):
        ring.retire("")


def test_a_ring_that_creates_nothing_reports_missing_keys(cluster: Cluster) -> None:
    ring = cluster.ring(create=False)
    assert ring.statuses() == [] and ring.jwks() == {"keys": []}
    with pytest.raises(NoActiveKeyError) as info:
        ring.signing_key("RS256")
    assert isinstance(info.value, KeyError)
    assert cluster.stored_kids() == []
