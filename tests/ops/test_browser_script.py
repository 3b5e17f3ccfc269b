"""`make browser` (scripts/browser.sh): Chromium for the browser tests, installed once.

The real script, on a PATH of stand-ins: `chromium` and `apt-get` are small scripts that
record how they were called, so no package is installed and nothing is downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "browser.sh"
#: what the script and the apt-get stand-in run besides the stand-ins
TOOLS = ("bash", "env", "mktemp", "tail", "rm", "cp", "chmod", "dirname")

CHROMIUM = """#!/bin/bash
echo "Chromium 156.0.0.0 stand-in"
"""
#: apt-get that records its arguments; `install` puts a chromium stand-in on PATH
APT_GET = """#!/bin/bash
echo "$*" >>"$STUB_LOG"
[[ ${STUB_FAIL:-} == "$1" ]] && { echo "E: stand-in failure of $1" >&2; exit 100; }
if [[ $1 == install ]]; then
  cp "$(dirname "$0")/chromium.stub" "$(dirname "$0")/chromium"
  chmod +x "$(dirname "$0")/chromium"
fi
echo "stand-in apt-get $1: done"
"""


def _bin(tmp_path: Path, *, chromium: bool, apt_get: bool = True) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "id").write_text("#!/bin/bash\necho 0\n")  # root: no sudo
    (bin_dir / "chromium.stub").write_text(CHROMIUM)
    if chromium:
        (bin_dir / "chromium").write_text(CHROMIUM)
    if apt_get:
        (bin_dir / "apt-get").write_text(APT_GET)
    for path in bin_dir.iterdir():
        if not path.is_symlink():
            path.chmod(0o755)
    return bin_dir


def _run(bin_dir: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": str(bin_dir), "STUB_LOG": str(tmp_path / "apt.log"), "TMPDIR": str(tmp_path)}
    full.update(env)
    return subprocess.run(
        [str(bin_dir / "bash"), str(SCRIPT)],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _apt_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def test_nothing_happens_when_chromium_is_there(tmp_path: Path) -> None:
    bin_dir = _bin(tmp_path, chromium=True)
    done = _run(bin_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"==> browser: {bin_dir / 'chromium'} (Chromium 156.0.0.0 stand-in)\n"
    assert _apt_calls(tmp_path) == []


def test_it_installs_debians_chromium_when_missing(tmp_path: Path) -> None:
    bin_dir = _bin(tmp_path, chromium=False)
    done = _run(bin_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    assert _apt_calls(tmp_path) == ["update", "install -y --no-install-recommends chromium"]
    lines = [line for line in done.stdout.splitlines() if line.startswith("==> ")]
    assert lines[1:] == [
        "==> apt-get update",
        "==> apt-get install -y --no-install-recommends chromium",
        f"==> browser: {bin_dir / 'chromium'} (Chromium 156.0.0.0 stand-in)",
    ]
    again = _run(bin_dir, tmp_path)  # idempotent: now it is there
    assert again.returncode == 0 and len(_apt_calls(tmp_path)) == 2


def test_a_failed_install_says_why(tmp_path: Path) -> None:
    for step in ("update", "install"):
        bin_dir = _bin(tmp_path / step, chromium=False)
        done = _run(bin_dir, tmp_path / step, STUB_FAIL=step)
        assert done.returncode == 1
        assert f"apt-get {step}" in done.stderr and "failed" in done.stderr
        assert f"E: stand-in failure of {step}" in done.stderr  # the log's last lines
        assert not (bin_dir / "chromium").exists()


def test_no_apt_get_and_no_chromium_is_an_error_not_a_skip(tmp_path: Path) -> None:
    bin_dir = _bin(tmp_path, chromium=False, apt_get=False)
    done = _run(bin_dir, tmp_path)
    assert done.returncode == 1
    assert "no apt-get" in done.stderr and "SPINE_CHROMIUM" in done.stderr


def test_spine_chromium_names_another_build(tmp_path: Path) -> None:
    bin_dir = _bin(tmp_path, chromium=False)
    other = tmp_path / "chrome"
    other.write_text(CHROMIUM)
    other.chmod(0o755)
    done = _run(bin_dir, tmp_path, SPINE_CHROMIUM=str(other))
    assert done.returncode == 0 and str(other) in done.stdout
    assert _apt_calls(tmp_path) == []
    missing = _run(bin_dir, tmp_path, SPINE_CHROMIUM=str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "not an executable" in missing.stderr
