"""The vendored JavaScript is exactly what its VENDORED.md says (no I/O but the files).

A hand-edited or half-upgraded asset would otherwise pass unnoticed: the console serves these
files from its package, and their notes are what the issue's note lists as versions and
licences.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATIC_VENDOR = ROOT / "services" / "console" / "src" / "spine_console" / "static" / "vendor"
TEST_VENDOR = Path(__file__).resolve().parent / "vendor"
#: a table row of VENDORED.md: | `file` | package | version | licence | from | `sha256` |
ROW = re.compile(
    r"^\|\s*`(?P<file>[^`]+)`\s*\|\s*(?P<package>[^|]+?)\s*\|\s*(?P<version>[^|]+?)\s*\|"
    r"\s*(?P<licence>[^|]+?)\s*\|[^|]*\|\s*`(?P<sha256>[0-9a-f]{64})`\s*\|$"
)


def listed(directory: Path) -> dict[str, dict[str, str]]:
    """VENDORED.md's rows by file name."""
    rows = {}
    for line in (directory / "VENDORED.md").read_text().splitlines():
        match = ROW.match(line.strip())
        if match:
            rows[match["file"]] = match.groupdict()
    return rows


@pytest.mark.parametrize("directory", [STATIC_VENDOR, TEST_VENDOR], ids=["console", "tests"])
def test_every_vendored_file_is_listed_with_its_sha256(directory: Path) -> None:
    rows = listed(directory)
    assert rows, f"{directory}/VENDORED.md lists nothing"
    present = {p.name for p in directory.iterdir() if p.is_file() and p.name != "VENDORED.md"}
    assert present == set(rows), "a file not in VENDORED.md, or a row without its file"
    for name, row in rows.items():
        digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        assert digest == row["sha256"], f"{name}: sha256 {digest}, VENDORED.md says otherwise"
        assert row["version"] in name, f"{name}: the file name carries its version"
        if not name.endswith(".LICENSE.txt"):
            assert f"{name}.LICENSE.txt" in rows, f"{name} has no licence text beside it"


def test_the_pinned_versions() -> None:
    """The versions the console's templates and the browser tests name."""
    console = {row["package"]: row["version"] for row in listed(STATIC_VENDOR).values()}
    assert console == {"htmx.org": "2.0.11", "htmx-ext-sse": "2.2.4"}
    tests = {row["package"]: row["version"] for row in listed(TEST_VENDOR).values()}
    assert tests == {"axe-core": "4.14.1"}


def test_a_changed_byte_is_caught(tmp_path: Path) -> None:
    (tmp_path / "VENDORED.md").write_text((TEST_VENDOR / "VENDORED.md").read_text())
    for name in listed(TEST_VENDOR):
        data = (TEST_VENDOR / name).read_bytes()
        (tmp_path / name).write_bytes(data[:-1] + b"\n" if data[-1:] != b"\n" else data + b" ")
    with pytest.raises(AssertionError, match="sha256"):
        test_every_vendored_file_is_listed_with_its_sha256(tmp_path)
