#!/usr/bin/env bash
# The headless browser the console's browser tests drive (tests/browser): Debian's chromium
# package, driven by Playwright with executable_path (Playwright's own browser download
# cannot work here). Idempotent: nothing happens when `chromium` is already on PATH, or when
# SPINE_CHROMIUM names an executable (another Chromium build the tests should use).
set -euo pipefail

if [[ -n "${SPINE_CHROMIUM:-}" ]]; then
  if [[ -x "$SPINE_CHROMIUM" ]]; then
    echo "==> browser: $SPINE_CHROMIUM (SPINE_CHROMIUM)"
    exit 0
  fi
  echo "!!  SPINE_CHROMIUM=$SPINE_CHROMIUM is not an executable file" >&2
  exit 1
fi

if command -v chromium >/dev/null 2>&1; then
  echo "==> browser: $(command -v chromium) ($(chromium --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    echo "!!  chromium is not installed and this is not root (no sudo): install Debian's" >&2
    echo "    chromium package (apt-get install chromium) or set SPINE_CHROMIUM" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "!!  chromium is not installed and there is no apt-get here: install Chromium and put" >&2
  echo "    it on PATH as 'chromium', or set SPINE_CHROMIUM to its executable" >&2
  exit 1
fi

LOG="$(mktemp -t spine-browser.XXXXXX.log)"
echo "==> installing Debian's chromium package for the browser tests (log $LOG)"
echo "==> apt-get update"
if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >"$LOG" 2>&1; then
  echo "!!  apt-get update failed; last lines of $LOG:" >&2
  tail -n 20 "$LOG" >&2
  exit 1
fi
echo "==> apt-get install -y --no-install-recommends chromium"
if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends chromium >>"$LOG" 2>&1; then
  echo "!!  apt-get install chromium failed; last lines of $LOG:" >&2
  tail -n 20 "$LOG" >&2
  exit 1
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "!!  apt-get installed chromium, but there is no 'chromium' on PATH ($PATH)" >&2
  exit 1
fi
rm -f "$LOG"
echo "==> browser: $(command -v chromium) ($(chromium --version 2>/dev/null || echo 'version unknown'))"
