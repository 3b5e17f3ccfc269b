#!/usr/bin/env bash
# Rebuild services' projections from Kafka and swap them in while they serve (`make rebuild`).
#   scripts/rebuild.sh [SERVICE] [options of python -m spine_servicekit.rebuild]
# Uses the same environment as `make up` (.spine/infra.env, then .env), so the rebuild reads
# the topics and schemas the running services use.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ -f .spine/infra.env ]] && set -a && . .spine/infra.env && set +a
[[ -f .env ]] && set -a && . .env && set +a
args=()
if [[ $# -gt 0 && "$1" != -* ]]; then
  args+=(--service "$1")
  shift
else
  args+=(--all)
fi
exec "${UV:-uv}" run --frozen python -m spine_servicekit.rebuild "${args[@]}" "$@"
