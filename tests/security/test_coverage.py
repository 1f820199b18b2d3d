"""SECURITY.md's coverage table and the security suite stay in step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_row_in_security_md_has_named_tests() -> None:
    table = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([A-Z]{2}-\d{2}) \|", table, flags=re.MULTILINE)
    assert len(rows) == 76  # the whole checklist
    sources = "".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "tests/security").glob("test_*.py")
    )
    for row in rows:
        prefix, number = row.lower().split("-")
        assert re.search(rf"def test_{prefix}_?{number}_", sources), f"{row} has no test"
