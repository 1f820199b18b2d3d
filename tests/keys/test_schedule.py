"""broker.keys.schedule: the published set and the active key as a pure function of the
key list and ``now`` (explicit times; no clock, no files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import KeysConfig, LifetimesConfig
from broker.keys.schedule import (
    ACTIVE,
    CLOCK_SKEW_MARGIN,
    EXPIRED,
    NEXT,
    PREVIOUS,
    WITHDRAWN,
    KeyInfo,
    Policy,
    active,
    has_next,
    new_key_times,
    next_change,
    published,
    rotation_due,
    status,
)

T0 = 1_700_000_000
AHEAD, RETENTION, INTERVAL = 100, 1000, 5000
POLICY = Policy(
    retention=RETENTION,
    publish_ahead=AHEAD,
    rotation_interval=INTERVAL,
    refresh_interval=10,
    jwks_max_age=50,
)


def key(kid: str, created: int, activates: int, retired: int | None = None) -> KeyInfo:
    return KeyInfo(kid, "RS256", created, activates, retired)


def kids(keys: list[KeyInfo], now: int) -> list[str]:
    return [k.kid for k in published(keys, ["RS256", "ES256"], now, RETENTION)]


def state(keys: list[KeyInfo], kid: str, now: int) -> str:
    found = next(k for k in keys if k.kid == kid)
    return status(keys, found, now, RETENTION).state


def rotated(keys: list[KeyInfo], kid: str, now: int) -> list[KeyInfo]:
    times = new_key_times(keys, "RS256", now, AHEAD)
    assert times is not None
    return [*keys, key(kid, *times)]


def test_the_first_key_signs_at_once() -> None:
    assert new_key_times([], "RS256", T0, AHEAD) == (T0, T0)
    keys = [key("a", T0, T0)]
    assert active(keys, "RS256", T0) == keys[0]
    assert kids(keys, T0) == ["a"]
    assert state(keys, "a", T0) == ACTIVE
    assert active([], "RS256", T0) is None


def test_a_rotated_key_is_published_before_it_signs_then_signs() -> None:
    keys = rotated([key("a", T0, T0)], "b", T0 + 10)
    assert keys[1] == key("b", T0 + 10, T0 + 10 + AHEAD)
    assert kids(keys, T0 + 9) == ["a"]  # not published before it was created
    for now in (T0 + 10, T0 + 10 + AHEAD - 1):
        assert active(keys, "RS256", now).kid == "a"  # type: ignore[union-attr]
        assert kids(keys, now) == ["a", "b"]  # the active key first
        assert state(keys, "b", now) == NEXT
    switch = T0 + 10 + AHEAD
    assert active(keys, "RS256", switch).kid == "b"  # type: ignore[union-attr]
    assert kids(keys, switch) == ["b", "a"]
    assert state(keys, "a", switch) == PREVIOUS


def test_a_superseded_key_stays_published_for_the_retention_then_goes() -> None:
    keys = rotated([key("a", T0, T0)], "b", T0)
    switch = T0 + AHEAD
    assert kids(keys, switch + RETENTION - 1) == ["b", "a"]
    assert kids(keys, switch + RETENTION) == ["b"]
    assert state(keys, "a", switch + RETENTION) == EXPIRED
    assert status(keys, keys[0], switch, RETENTION).unpublish_at == switch + RETENTION


def test_retention_covers_the_longest_token_and_the_clock_skew() -> None:
    lifetimes = LifetimesConfig(id_token=600, access_token=900)
    policy = Policy.from_config(KeysConfig(dir=Path("keys")), lifetimes)
    assert policy.retention == 900 + CLOCK_SKEW_MARGIN
    short = Policy.from_config(KeysConfig(dir=Path("keys")), LifetimesConfig(5, 5, 5, 5))
    assert short.retention == 120 + CLOCK_SKEW_MARGIN  # back-channel logout tokens


def test_rotation_is_idempotent_while_a_next_key_is_scheduled() -> None:
    keys = rotated([key("a", T0, T0)], "b", T0)
    assert has_next(keys, "RS256", T0 + 1)
    assert new_key_times(keys, "RS256", T0 + 1, AHEAD) is None
    assert new_key_times(keys, "RS256", T0 + AHEAD, AHEAD) == (T0 + AHEAD, T0 + 2 * AHEAD)


def test_retire_withdraws_at_once() -> None:
    keys = rotated([key("a", T0, T0)], "b", T0)
    withdrawn = [keys[0], key("b", T0, T0 + AHEAD, T0 + 5)]
    assert kids(withdrawn, T0 + 4) == ["a", "b"]
    assert kids(withdrawn, T0 + 5) == ["a"]
    assert state(withdrawn, "b", T0 + 5) == WITHDRAWN
    # A next key withdrawn before it activated never takes over.
    assert active(withdrawn, "RS256", T0 + AHEAD + 1).kid == "a"  # type: ignore[union-attr]
    assert new_key_times(withdrawn, "RS256", T0 + 6, AHEAD) == (T0 + 6, T0 + 6 + AHEAD)


def test_withdrawing_the_active_key_lets_the_next_key_sign_early() -> None:
    keys = [key("a", T0, T0, T0 + 50), key("b", T0 + 10, T0 + AHEAD)]
    assert active(keys, "RS256", T0 + 49).kid == "a"  # type: ignore[union-attr]
    assert active(keys, "RS256", T0 + 50).kid == "b"  # type: ignore[union-attr]
    assert kids(keys, T0 + 50) == ["b"]


def test_withdrawing_the_only_key_leaves_none_and_a_new_one_signs_at_once() -> None:
    keys = [key("a", T0, T0, T0 + 50)]
    assert active(keys, "RS256", T0 + 50) is None
    assert kids(keys, T0 + 50) == []
    assert new_key_times(keys, "RS256", T0 + 50, AHEAD) == (T0 + 50, T0 + 50)
    assert rotation_due(keys, "RS256", T0 + 50, POLICY)


def test_a_superseded_key_never_signs_again() -> None:
    """Withdrawing b does not bring a back, even within a's retention."""
    keys = [key("a", T0, T0), key("b", T0, T0 + AHEAD, T0 + AHEAD + 10)]
    now = T0 + AHEAD + 10
    assert active(keys, "RS256", now) is None
    assert kids(keys, now) == ["a"]  # still published for the tokens it signed
    assert state(keys, "a", now) == PREVIOUS
    assert kids(keys, T0 + AHEAD + RETENTION) == []


def test_ties_are_broken_by_kid_the_same_way_everywhere() -> None:
    keys = [key("b", T0, T0), key("a", T0, T0)]
    assert active(keys, "RS256", T0).kid == "b"  # type: ignore[union-attr]
    assert active(list(reversed(keys)), "RS256", T0).kid == "b"  # type: ignore[union-attr]
    assert kids(keys, T0) == kids(list(reversed(keys)), T0) == ["b", "a"]


def test_algorithms_are_scheduled_independently() -> None:
    keys = [key("r1", T0, T0), KeyInfo("e1", "ES256", T0, T0), key("r2", T0, T0 + AHEAD)]
    now = T0 + AHEAD
    assert active(keys, "RS256", now).kid == "r2"  # type: ignore[union-attr]
    assert active(keys, "ES256", now).kid == "e1"  # type: ignore[union-attr]
    assert kids(keys, now) == ["r2", "r1", "e1"]


def test_scheduled_rotation_fires_so_the_next_key_signs_one_interval_later() -> None:
    keys = [key("a", T0, T0)]
    due_at = T0 + INTERVAL - AHEAD
    assert not rotation_due(keys, "RS256", due_at - 1, POLICY)
    assert rotation_due(keys, "RS256", due_at, POLICY)
    times = new_key_times(keys, "RS256", due_at, AHEAD)
    assert times == (due_at, T0 + INTERVAL)  # signs exactly INTERVAL after "a" did
    keys.append(key("b", *times))
    assert not rotation_due(keys, "RS256", due_at + 1, POLICY)  # b is pending
    assert not rotation_due(keys, "RS256", T0 + INTERVAL + 1, POLICY)
    assert rotation_due(keys, "RS256", T0 + 2 * INTERVAL - AHEAD, POLICY)


def test_scheduled_rotation_off() -> None:
    off = Policy(RETENTION, AHEAD, 0, 10, 50)
    assert not rotation_due([key("a", 0, 0)], "RS256", T0 * 2, off)
    assert rotation_due([], "RS256", T0, off)  # a missing key is always due


def test_a_key_from_the_future_is_not_published_yet() -> None:
    keys = [key("a", T0, T0), key("b", T0 + 50, T0 + 50 + AHEAD)]
    assert kids(keys, T0 + 49) == ["a"]


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (T0, T0 + 10),  # b is created
        (T0 + 10, T0 + 10 + AHEAD),  # b activates
        (T0 + 10 + AHEAD, T0 + RETENTION),  # a's own activation + retention (a superset)
        (T0 + 10 + AHEAD + RETENTION, T0 + 10 + AHEAD + RETENTION + 1),
    ],
)
def test_next_change_is_the_next_boundary(now: int, expected: int) -> None:
    keys = [key("a", T0, T0), key("b", T0 + 10, T0 + 10 + AHEAD), key("c", 0, 0, 1)]
    if now >= T0 + 10 + AHEAD + RETENTION:
        keys.append(key("d", expected, expected))
    assert next_change(keys, now, RETENTION) == expected
