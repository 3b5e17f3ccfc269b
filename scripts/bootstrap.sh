#!/usr/bin/env bash
# Install the Python toolchain the project needs (uv from PyPI) and sync the workspace.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV_VERSION="0.13.9"
cd "$ROOT"
if ! command -v uv >/dev/null 2>&1; then
  echo "==> installing uv ${UV_VERSION} from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "uv==${UV_VERSION}"
fi
echo "==> syncing the Python workspace (uv sync --frozen)"
uv sync --frozen --all-packages --quiet
