"""Register entry points for a test without installing anything.

``importlib.metadata`` finds distributions by scanning ``sys.path`` for ``*.dist-info``
directories; a directory with ``METADATA`` and ``entry_points.txt`` in a temporary path is
therefore a registered package for as long as that path is on ``sys.path``, and nothing
in the virtualenv changes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

GROUP = "qq_oidc_broker.connectors"


def write_dist_info(
    root: Path, name: str, entry_points: Mapping[str, str], version: str = "0.0.1"
) -> Path:
    """``root/<name>-<version>.dist-info`` declaring ``entry_points`` (name -> module:attr)."""
    dist = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = [f"[{GROUP}]", *(f"{key} = {value}" for key, value in entry_points.items())]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dist


@contextmanager
def on_sys_path(root: Path) -> Iterator[Path]:
    """``root`` first on ``sys.path`` while the block runs."""
    entry = str(root)
    sys.path.insert(0, entry)
    try:
        yield root
    finally:
        sys.path.remove(entry)
