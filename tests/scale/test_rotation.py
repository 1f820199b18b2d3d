"""Key rotation across instances (issue 5, point 4), in both key modes.

Every instance must publish the same JWKS and sign with the same key, before, during
and after a rotation; the next key is published before any instance signs with it;
and of several instances running the rotation schedule, exactly one creates each key.

Short settings keep it quick: JWKS max-age 1 s (so instances re-read keys every second)
and keys published 6 s before they sign.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import jwt

from tests.scale.cluster import Cluster, Login, TokenSet

PUBLISH_AHEAD = 6  # roomy: the checks before activation must fit in it on a loaded machine
REFRESH = 1  # keys.refresh_interval for jwks_max_age 1
CLUSTER_OPTIONS: dict[str, Any] = {
    "instances": 3,
    "keys": {"jwks_max_age": 1, "rotation": {"interval": 0, "publish_ahead": PUBLISH_AHEAD}},
}


def kids(jwks: dict[str, Any]) -> list[str]:
    return sorted(key["kid"] for key in jwks["keys"])


def snapshot(cluster: Cluster) -> list[list[str]]:
    """Each instance's published kids, asked straight (not through the balancer)."""
    return [kids(cluster.instance_get(i, "/jwks.json").json()) for i in range(cluster.count)]


def signing_kid(cluster: Cluster, index: int, refresh_token: str) -> tuple[str, str]:
    """Refresh on instance ``index``: (kid of the new ID token, the next refresh token)."""
    with cluster.balancer.pinned(index):
        tokens = TokenSet.from_response(cluster.refresh(refresh_token))
    assert tokens.refresh_token is not None
    cluster.verify(tokens.id_token, cluster.jwks())  # verifies against the served JWKS
    return jwt.get_unverified_header(tokens.id_token)["kid"], tokens.refresh_token


def key_rows(cluster: Cluster) -> list[dict[str, Any]]:
    listed = cluster.cli("keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout)["keys"]
    return [row for row in rows if row["alg"] == "RS256"]


def test_a_rotation_is_published_everywhere_before_any_instance_signs_with_it(
    cluster: Cluster,
) -> None:
    first = Login(cluster).complete()
    old_kid = jwt.get_unverified_header(first.id_token)["kid"]
    assert first.refresh_token
    refresh_tokens = {i: first.refresh_token for i in range(cluster.count)}
    # One refresh family per instance would be revoked as reuse; give each its own login.
    for i in range(1, cluster.count):
        other = Login(cluster).complete()
        assert other.refresh_token
        refresh_tokens[i] = other.refresh_token

    rotated = cluster.cli("keys", "rotate", "--json")
    assert rotated.returncode == 0, rotated.stderr
    (new,) = [k for k in json.loads(rotated.stdout)["keys"] if k["alg"] == "RS256"]
    assert new["created"] and new["kid"] != old_kid
    activates_at = new["activates_at"]

    # Within a refresh interval every instance publishes the new key beside the old one,
    # and they all agree; none signs with it yet.
    time.sleep(REFRESH + 0.5)
    assert time.time() < activates_at - 0.5, "the machine is too slow for this schedule"
    views = snapshot(cluster)
    assert all(view == views[0] for view in views), views
    assert {old_kid, new["kid"]} <= set(views[0])
    for i in range(cluster.count):
        kid, refresh_tokens[i] = signing_kid(cluster, i, refresh_tokens[i])
        assert kid == old_kid, f"instance {i} signed with the next key before its time"

    # After activates_at every instance signs with the new key; the old one stays published
    # (tokens it signed are still valid), and the JWKS is the same everywhere.
    time.sleep(max(0.0, activates_at - time.time()) + 0.5)
    for i in range(cluster.count):
        kid, refresh_tokens[i] = signing_kid(cluster, i, refresh_tokens[i])
        assert kid == new["kid"], f"instance {i} still signs with the old key"
    views = snapshot(cluster)
    assert all(view == views[0] for view in views), views
    assert {old_kid, new["kid"]} <= set(views[0])
    cluster.verify(first.id_token, cluster.instance_get(2, "/jwks.json").json())


def test_scheduled_rotation_on_every_instance_creates_each_key_once(cluster: Cluster) -> None:
    """All three instances run the schedule every second; the lease (database) or the
    directory lock (files) lets one of them create each next key, and only one.

    With a 6 s interval and keys published 3 s ahead, a new key is due every 6 s. Watched
    for ~14 s: at no moment are two next keys scheduled, and no two new keys were created
    for the same turn (they are at least interval - publish_ahead apart).
    """
    before = {row["kid"] for row in key_rows(cluster)}
    ahead = 3
    interval = 2 * ahead
    cluster.keys["rotation"] = {"interval": interval, "publish_ahead": ahead}
    cluster._write_config()
    try:
        for i in range(cluster.count):
            cluster.restart(i)
        deadline = time.monotonic() + 14
        while time.monotonic() < deadline:
            rows = key_rows(cluster)
            pending = [row for row in rows if row["state"] == "next"]
            assert len(pending) <= 1, rows
            time.sleep(0.5)
        created = sorted(
            (row for row in key_rows(cluster) if row["kid"] not in before),
            key=lambda row: row["created_at"],
        )
        assert created, "no instance rotated"
        assert all(r["activates_at"] - r["created_at"] == ahead for r in created)
        gaps = [b["created_at"] - a["created_at"] for a, b in itertools.pairwise(created)]
        assert all(gap >= interval - ahead for gap in gaps), created
    finally:
        cluster.keys["rotation"] = {"interval": 0, "publish_ahead": PUBLISH_AHEAD}
        cluster._write_config()
        for i in range(cluster.count):
            cluster.restart(i)
