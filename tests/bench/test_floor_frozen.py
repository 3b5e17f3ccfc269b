"""The floor is frozen: a change to ``bench/floor.py`` must be its own reviewed commit.

``bench/README.md`` records the floor's sha256; this test fails when the file and the
record disagree, so a floor change cannot slip in with another one unnoticed (the commit
that changes it updates the record and reports both floors, measured in the same run).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_floor_matches_the_frozen_hash_in_the_bench_readme() -> None:
    readme = (ROOT / "bench" / "README.md").read_text()
    recorded = re.search(r"Frozen at `bench/floor.py` sha256 `([0-9a-f]{64})`", readme)
    assert recorded, "bench/README.md must record the frozen floor's sha256"
    actual = hashlib.sha256((ROOT / "bench" / "floor.py").read_bytes()).hexdigest()
    assert actual == recorded.group(1), (
        "bench/floor.py changed: a floor change is its own commit that updates the sha256 in "
        "bench/README.md and reports the floor before and after, measured in the same run"
    )
