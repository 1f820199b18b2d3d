"""The key schedule: a pure function of the key list and ``now``.

Every instance computes the same answer from the same list, so instances agree on the
published set and the signing key without talking to each other. Each key has:

* ``created_at``: published in JWKS from then on;
* ``activates_at``: signs from then on, until a newer key of its algorithm activates
  (it is then *superseded*);
* ``retired_at`` (optional): an operator withdrew it (``keys retire``); gone from JWKS.

Rules (per algorithm):

* **Active key**: the latest key that has activated (greatest ``activates_at``, ties by
  ``kid``), unless it was withdrawn; then the earliest pending key signs early (a
  withdrawn key must not sign, and signing early beats not signing). A superseded key
  never signs again, even when its successor is withdrawn: an old key coming back would
  surprise every relying party.
* **Published**: created, not withdrawn, and not superseded longer ago than
  ``retention`` (the longest lifetime of a token the key signed plus a clock-skew
  margin), so that every token it signed keeps verifying until it expires. A key once
  unpublished never comes back.
* **Rotation** makes a key published ``publish_ahead`` (>= JWKS ``max-age`` + the
  instances' refresh interval) before it signs: a relying party holding a cached JWKS
  (RFC 7517 key sets; OIDC Core §10.1.1 lets it cache them) has refetched it by then.
  The first key of an algorithm signs at once: nobody can have cached a JWKS without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from broker.config import KeysConfig, LifetimesConfig

#: Relying parties accept tokens a little past ``exp`` (clock skew, usually <= 5 min):
#: a key stays published that much longer than its longest token.
CLOCK_SKEW_MARGIN: Final = 300
#: The broker's signed tokens that no lifetime setting covers: back-channel logout tokens
#: (``broker.oidc.backchannel.LOGOUT_TOKEN_LIFETIME``). Refresh tokens are opaque.
OTHER_SIGNED_TOKEN_LIFETIME: Final = 120

ACTIVE, NEXT, PREVIOUS, EXPIRED, WITHDRAWN = "active", "next", "previous", "expired", "withdrawn"


@dataclass(frozen=True)
class KeyInfo:
    """What the schedule needs to know about a key (no key material)."""

    kid: str
    alg: str
    created_at: int
    activates_at: int
    retired_at: int | None = None


@dataclass(frozen=True)
class Policy:
    """Seconds. ``rotation_interval`` 0 turns scheduled rotation off."""

    retention: int
    publish_ahead: int
    rotation_interval: int
    refresh_interval: int
    jwks_max_age: int

    @classmethod
    def from_config(cls, keys: KeysConfig, lifetimes: LifetimesConfig) -> Policy:
        longest = max(lifetimes.id_token, lifetimes.access_token, OTHER_SIGNED_TOKEN_LIFETIME)
        return cls(
            retention=longest + CLOCK_SKEW_MARGIN,
            publish_ahead=keys.publish_ahead,
            rotation_interval=keys.rotation_interval,
            refresh_interval=keys.refresh_interval,
            jwks_max_age=keys.jwks_max_age,
        )

    @classmethod
    def default(cls) -> Policy:
        """The config defaults (for a ring built without a config, as in tests)."""
        return cls.from_config(KeysConfig(dir=Path("keys")), LifetimesConfig())


@dataclass(frozen=True)
class KeyStatus:
    """A key as ``keys list`` shows it at some ``now``."""

    key: KeyInfo
    state: str
    published: bool
    unpublish_at: int | None


def _order(key: KeyInfo) -> tuple[int, str]:
    return (key.activates_at, key.kid)


def is_withdrawn(key: KeyInfo, now: float) -> bool:
    return key.retired_at is not None and key.retired_at <= now


def _took_over(key: KeyInfo, now: float) -> bool:
    """Activated by ``now`` and not withdrawn before it could activate."""
    never = key.retired_at is not None and key.retired_at <= key.activates_at
    return key.activates_at <= now and not never


def _of(keys: Sequence[KeyInfo], alg: str) -> list[KeyInfo]:
    return [key for key in keys if key.alg == alg]


def is_pending(key: KeyInfo, now: float) -> bool:
    """Scheduled to sign later and not withdrawn (published already, or soon)."""
    return key.activates_at > now and not is_withdrawn(key, now)


def has_next(keys: Sequence[KeyInfo], alg: str, now: float) -> bool:
    return any(is_pending(key, now) for key in _of(keys, alg))


def active(keys: Sequence[KeyInfo], alg: str, now: float) -> KeyInfo | None:
    """The key that signs ``alg`` at ``now``, or ``None`` (no key, or all withdrawn)."""
    latest = max((k for k in _of(keys, alg) if _took_over(k, now)), key=_order, default=None)
    if latest is not None and not is_withdrawn(latest, now):
        return latest
    early = [k for k in _of(keys, alg) if is_pending(k, now) and k.created_at <= now]
    return min(early, key=_order, default=None)


def superseded_at(keys: Sequence[KeyInfo], key: KeyInfo, now: float) -> int | None:
    """When a newer key of the same algorithm took over from ``key`` (by ``now``)."""
    return min(
        (
            other.activates_at
            for other in _of(keys, key.alg)
            if other.kid != key.kid and _order(other) > _order(key) and _took_over(other, now)
        ),
        default=None,
    )


def is_published(keys: Sequence[KeyInfo], key: KeyInfo, now: float, retention: int) -> bool:
    if key.created_at > now or is_withdrawn(key, now):
        return False
    since = superseded_at(keys, key, now)
    return since is None or now < since + retention


def published(
    keys: Sequence[KeyInfo], algorithms: Sequence[str], now: float, retention: int
) -> list[KeyInfo]:
    """The JWKS at ``now``, in a stable order: per algorithm (config order) the active
    key first, then the others newest first."""
    result: list[KeyInfo] = []
    for alg in algorithms:
        signing = active(keys, alg, now)
        rest = sorted(
            (k for k in _of(keys, alg) if k != signing and is_published(keys, k, now, retention)),
            key=_order,
            reverse=True,
        )
        result.extend(([signing] if signing is not None else []) + rest)
    return result


def next_change(keys: Sequence[KeyInfo], now: float, retention: int) -> float:
    """The earliest time after ``now`` at which the schedule may change (a superset of
    the real boundaries), so a computed view can be reused until then."""
    times: list[float] = []
    for key in keys:
        times.extend((key.created_at, key.activates_at, key.activates_at + retention))
        if key.retired_at is not None:
            times.append(key.retired_at)
    return min((t for t in times if t > now), default=math.inf)


def unpublish_at(keys: Sequence[KeyInfo], key: KeyInfo, now: float, retention: int) -> int | None:
    """When ``key`` leaves (or left) the JWKS, if that is known at ``now``."""
    if key.retired_at is not None:
        return key.retired_at
    since = superseded_at(keys, key, now)
    return None if since is None else since + retention


def status(keys: Sequence[KeyInfo], key: KeyInfo, now: float, retention: int) -> KeyStatus:
    if is_withdrawn(key, now):
        state = WITHDRAWN
    elif active(keys, key.alg, now) == key:
        state = ACTIVE
    elif is_pending(key, now):
        state = NEXT
    elif is_published(keys, key, now, retention):
        state = PREVIOUS
    else:
        state = EXPIRED
    return KeyStatus(
        key=key,
        state=state,
        published=is_published(keys, key, now, retention),
        unpublish_at=unpublish_at(keys, key, now, retention),
    )


def new_key_times(
    keys: Sequence[KeyInfo], alg: str, now: int, publish_ahead: int
) -> tuple[int, int] | None:
    """``(created_at, activates_at)`` for a rotation of ``alg`` at ``now``, or ``None``
    when a next key is already scheduled (rotation is idempotent).

    Without any usable key (first start, or all withdrawn) the new key signs at once.
    """
    if active(keys, alg, now) is None:
        return (now, now)
    if has_next(keys, alg, now):
        return None
    return (now, now + publish_ahead)


def rotation_due(keys: Sequence[KeyInfo], alg: str, now: float, policy: Policy) -> bool:
    """Whether scheduled rotation should create the next key of ``alg`` now.

    Due ``publish_ahead`` before the active key has signed for ``rotation_interval``, so
    the next key starts signing exactly ``rotation_interval`` after it did. An algorithm
    without any usable key is due at once (it needs a key whatever the interval).
    """
    signing = active(keys, alg, now)
    if signing is None:
        return True
    if policy.rotation_interval <= 0 or has_next(keys, alg, now):
        return False
    return now >= signing.activates_at + policy.rotation_interval - policy.publish_ahead
