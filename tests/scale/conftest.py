"""Cluster fixtures: one cluster per test module, put back together between tests.

Starting three ``serve`` processes takes seconds, so a module shares one cluster; a
test that kills or stops an instance leaves the restart to the next test's setup
(:meth:`Cluster.ensure_running`), which also heals PostgreSQL (``restore``) and resets
routing and the emulator, so no test depends on what an earlier one left behind.

A module sets ``CLUSTER_OPTIONS`` (keyword arguments of :class:`Cluster`). Key modes:
``KEY_MODES`` below, overridable with ``BROKER_SCALE_KEY_MODES=files,database``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.pg import require_pg
from tests.scale.cluster import Cluster

#: Both ways instances share keys and secrets: a shared directory, or PostgreSQL.
KEY_MODES = tuple(
    mode.strip() for mode in os.environ.get("BROKER_SCALE_KEY_MODES", "files,database").split(",")
)


@pytest.fixture(scope="module", params=KEY_MODES)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A running cluster for the whole module (skipped only when PostgreSQL is down)."""
    require_pg()
    options: dict[str, Any] = dict(getattr(request.module, "CLUSTER_OPTIONS", {}))
    workdir = tmp_path_factory.mktemp(f"cluster-{request.param}")
    with Cluster(workdir, key_mode=request.param, **options) as running:
        yield running


@pytest.fixture(autouse=True)
def _whole_cluster(request: pytest.FixtureRequest) -> None:
    """Every instance up, PostgreSQL reachable, round-robin, emulator defaults."""
    if "cluster" not in request.fixturenames:
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    cluster.pg.restore()
    cluster.ensure_running()
    cluster.reset()
