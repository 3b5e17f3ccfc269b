#!/usr/bin/env bash
# Start or stop the AI Spine services as background processes (used by `make up/down`).
# Each process keeps .spine/run/<name>.pid and .spine/logs/<name>.log; `up` starts only
# what is not running, `down` stops only what this script started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$ROOT/.spine/run"
LOGS="$ROOT/.spine/logs"
mkdir -p "$RUN" "$LOGS"
cd "$ROOT"

# name=command; order matters: the gateway comes last so /health means "all started".
SERVICES=(
  "registry=spine-registry"
  "orchestrator=spine-orchestrator"
  "auth=spine-auth"
  "metrics=spine-metrics"
  "relay=spine-relay"
  "agent-echo=spine-agent-echo"
  "agent-zoe=spine-agent-zoe"
  "agent-eddie=spine-agent-eddie"
  "agent-echo-http=spine-agent-echo-http"
  "gateway=spine-gateway"
)
# The console (DESIGN §13, docs/deploy.md): an HTTP client of the gateway only, on no bus, so
# not on the list above nor on /status's; started last, once the gateway is up, and stopped
# first. SPINE_CONSOLE_PORT (8080) and SPINE_CONSOLE_GATEWAY_URL (this gateway) from .env or
# the environment; it keeps its sessions in the REDIS_URL of .spine/infra.env.
CONSOLE="console=spine-console"

# What the gateway's /status expects to run (SPINE_EXPECTED_SERVICES, docs/deploy.md): every
# process above that is on the bus and installed, the services by the name they beat under,
# the demo Kafka agents as agent:<id> (the registry's catalogue says whether one is active).
# echo-http is not on it: an HTTP agent, registered only after the wait, whose liveness is
# the relay's probing. .env or the environment may set another list.
expected_services() {
  local entry name list=()
  for entry in "${SERVICES[@]}"; do
    name="${entry%%=*}"
    [[ -x "$ROOT/.venv/bin/${entry#*=}" ]] || continue
    case $name in
      agent-echo-http) ;;
      agent-*) list+=("agent:${name#agent-}") ;;
      *) list+=("$name") ;;
    esac
  done
  local IFS=,
  echo "${list[*]}"
}

# /metrics, /health and /ready (servicekit ops endpoint) of the processes without an HTTP API:
# one port each on this machine (in containers and pods they all use 9102). Override one
# with SPINE_OPS_PORT_<NAME> (e.g. SPINE_OPS_PORT_AGENT_ZOE=0 turns it off).
declare -A OPS_PORTS=(
  [registry]=9111 [orchestrator]=9112 [auth]=9113 [relay]=9114
  [agent-echo]=9115 [agent-zoe]=9116 [agent-eddie]=9117
)

load_env() {
  [[ -f "$ROOT/.spine/infra.env" ]] && set -a && . "$ROOT/.spine/infra.env" && set +a
  if [[ ! -f "$ROOT/.env" ]]; then
    local key
    key="mk_$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
    printf 'API_KEY=%s\nPORT=8000\n' "$key" > "$ROOT/.env"
    chmod 600 "$ROOT/.env"
    echo "==> wrote .env with a new master API_KEY (git-ignored)"
  fi
  set -a; . "$ROOT/.env"; set +a
  export PORT="${PORT:-8000}"
  scrape_token
}

# The gateway's Prometheus text needs the master key or this scrape token (docs/deploy.md):
# unless the environment or .env sets SPINE_METRICS_SCRAPE_TOKEN, one is made once and kept
# 0600 in .spine/metrics-scrape-token, where a local Prometheus can read it as its bearer
# credentials_file. Its value is never printed.
scrape_token() {
  [[ -n "${SPINE_METRICS_SCRAPE_TOKEN:-}" ]] && { export SPINE_METRICS_SCRAPE_TOKEN; return; }
  local file="$ROOT/.spine/metrics-scrape-token"
  if [[ ! -s "$file" ]]; then
    (umask 077; python3 -c 'import secrets; print("st_" + secrets.token_urlsafe(32))' > "$file")
    echo "==> wrote .spine/metrics-scrape-token (the Prometheus scrape token; 0600)"
  fi
  chmod 600 "$file"
  SPINE_METRICS_SCRAPE_TOKEN="$(<"$file")"
  export SPINE_METRICS_SCRAPE_TOKEN
}

# The relay signs every call to an HTTP agent (docs/agents.md): its Ed25519 key is
# .spine/relay/signing-key.pem (0600, created on first use, the public half in .pub beside
# it) unless .env or the environment names another SPINE_RELAY_SIGNING_KEY_FILE. The demo
# HTTP agent gets the public key, so echo-http answers the relay's signed calls only.
relay_key() {
  export SPINE_RELAY_SIGNING_KEY_FILE="${SPINE_RELAY_SIGNING_KEY_FILE:-$ROOT/.spine/relay/signing-key.pem}"
  [[ -x "$ROOT/.venv/bin/spine-relay" ]] || return 0
  ECHO_HTTP_RELAY_PUBLIC_KEY="$("$ROOT/.venv/bin/spine-relay" public-key)"
  export ECHO_HTTP_RELAY_PUBLIC_KEY
  echo "==> relay signing key $SPINE_RELAY_SIGNING_KEY_FILE (public key: spine-relay public-key)"
}

# Every message an agent publishes must be signed with a key the operator issued (DESIGN
# §12, docs/security.md): before anything starts, the relay (whose key signs what it
# writes for HTTP agents) and the demo Kafka agents are issued with spine-admin — their
# keys in .spine/agents/<id>/signing-key.pem (0600, reused when present, where the SDK
# looks by default), their tasks topics, and IssueAgent on spine.registry.admin.
DEMO_AGENTS=(echo zoe eddie)
issue_agents() {
  echo "==> issuing the services ($(secured && echo "one Kafka principal each, " || true)static topics; spine-admin issue-services)"
  if ! "$ROOT/.venv/bin/spine-admin" issue-services >>"$LOGS/spine-admin.log" 2>&1; then
    echo "!!  spine-admin issue-services failed:" >&2
    tail -n 5 "$LOGS/spine-admin.log" >&2
    return 1
  fi
  echo "==> issuing the relay and the demo agents (spine-admin issue-agent; log .spine/logs/spine-admin.log)"
  local id
  for id in relay "${DEMO_AGENTS[@]}"; do
    if ! "$ROOT/.venv/bin/spine-admin" issue-agent "$id" >>"$LOGS/spine-admin.log" 2>&1; then
      echo "!!  spine-admin issue-agent $id failed:" >&2
      tail -n 5 "$LOGS/spine-admin.log" >&2
      return 1
    fi
    echo "    $id: issued"
  done
  # Agents issued earlier by hand (make issue-agent) keep up with the ACL table too, e.g.
  # WRITE on the progress topic that came after them: ACLs only, revoked agents stay so.
  if secured; then
    echo "==> reconciling every issued agent's ACLs (spine-admin grant-agents)"
    if ! "$ROOT/.venv/bin/spine-admin" grant-agents >>"$LOGS/spine-admin.log" 2>&1; then
      echo "!!  spine-admin grant-agents failed:" >&2
      tail -n 5 "$LOGS/spine-admin.log" >&2
      return 1
    fi
  fi
}

# Really running: the very process recorded when it was started (pid, start time), not a
# zombie and not a reused pid — `kill -0` succeeds on both (scripts/procs.py).
alive() { [[ -f "$RUN/$1.pid" ]] && python3 "$ROOT/scripts/procs.py" alive "$1"; }

# On the secured broker (.spine/infra.env says SASL) every process logs in as its own
# principal, never as the admin infra.env names for tools: the services as themselves
# (gateway.json...), an agent as agent-<id> (DESIGN §12, docs/security.md).
secured() { [[ ${KAFKA_SECURITY_PROTOCOL:-PLAINTEXT} == SASL_* ]]; }
credentials_of() { # process name -> its credentials file ("" when it does not log in)
  secured || return 0
  [[ $1 == agent-echo-http || $1 == console ]] && return 0 # HTTP only: no Kafka client
  echo "${SPINE_KAFKA_CREDENTIALS_DIR:-$ROOT/.spine/credentials}/${SPINE_TOPIC_PREFIX:-}$1.json"
}

# The relay refuses loopback and private addresses (SSRF guard, docs/agents.md); the demo
# HTTP agent listens on loopback, so the relay (and the registry, which refuses at
# registration what the relay would refuse) may call that address and no other, unless
# .env or the environment sets SPINE_RELAY_ALLOWED_NETWORKS.
start_one() {
  local name=$1 cmd=$2
  if alive "$name"; then echo "    $name: already running (pid $(cat "$RUN/$name.pid"))"; return; fi
  if [[ -f "$RUN/$name.pid" ]]; then
    echo "    $name: pid $(cat "$RUN/$name.pid") is not running any more (exited, a zombie, or a reused pid): starting it again"
  fi
  rm -f "$RUN/$name.pid" "$RUN/$name.identity"
  if [[ ! -x "$ROOT/.venv/bin/$cmd" ]]; then echo "    $name: not installed yet ($cmd), skipped"; return; fi
  local override="SPINE_OPS_PORT_${name//-/_}"; override="${override^^}"
  local allowed=""
  if [[ $name == relay || $name == registry ]]; then
    allowed="${SPINE_RELAY_ALLOWED_NETWORKS:-127.0.0.1/32}"
  fi
  local login instance expected=""
  login="$(credentials_of "$name")"
  [[ $name == gateway ]] && expected="${SPINE_EXPECTED_SERVICES:-$(expected_services)}"
  # a new instance id per start: the readiness wait counts only this process's beats
  instance="$name-$(hostname)-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
  if [[ -n $login && ! -f $login ]]; then
    echo "!!  $name: no credentials file $login (spine-admin issue-services / issue-agent)" >&2
    return 1
  fi
  # the console signs in with the user's key: it is never handed the master key
  local withhold=()
  [[ $name == console ]] && withhold=(-u API_KEY -u SPINE_METRICS_SCRAPE_TOKEN)
  SPINE_OPS_PORT="${!override:-${OPS_PORTS[$name]:-0}}" SPINE_RELAY_ALLOWED_NETWORKS="$allowed" \
    KAFKA_CREDENTIALS_FILE="$login" KAFKA_SASL_USERNAME="" KAFKA_SASL_PASSWORD="" \
    KAFKA_SASL_PASSWORD_FILE="" SPINE_INSTANCE_ID="$instance" \
    SPINE_EXPECTED_SERVICES="$expected" \
    nohup env "${withhold[@]}" "$ROOT/.venv/bin/$cmd" >>"$LOGS/$name.log" 2>&1 &
  echo $! > "$RUN/$name.pid"
  python3 "$ROOT/scripts/procs.py" record "$name" "$!" "$instance"
  echo "    $name: started (pid $!, log .spine/logs/$name.log${login:+, Kafka login ${login##*/}})"
  [[ -z $expected ]] || echo "      /status expects: $expected"
}

up() {
  load_env
  relay_key
  issue_agents
  echo "==> starting services"
  for entry in "${SERVICES[@]}"; do start_one "${entry%%=*}" "${entry#*=}"; done
  echo "==> waiting for the gateway on port $PORT (/health, /status and every service's heartbeat)"
  if ! "$ROOT/.venv/bin/python" "$ROOT/scripts/wait_up.py" "$PORT" \
      registry orchestrator auth metrics relay gateway; then
    echo "!!  last gateway log lines:" >&2
    tail -n 30 "$LOGS/gateway.log" >&2 || true
    return 1
  fi
  if alive agent-echo-http; then
    echo "==> registering the demo HTTP agent echo-http (as compose's init job does)"
    "$ROOT/.venv/bin/python" "$ROOT/scripts/register_echo_http.py" || return 1
  fi
  start_console || return 1
  echo "==> AI Spine is up: http://127.0.0.1:$PORT  (API docs: http://127.0.0.1:$PORT/docs)"
  if alive console; then
    echo "==> console: http://127.0.0.1:$SPINE_CONSOLE_PORT  (sign in with an API key)"
  fi
  echo "    master key: API_KEY in .env; Prometheus scrape token: SPINE_METRICS_SCRAPE_TOKEN"
  echo "    (.spine/metrics-scrape-token unless .env or the environment sets it)"
}

# The console once the gateway answers, then its /healthz (up to 60 s; at once an error when
# the process has exited).
start_console() {
  export SPINE_CONSOLE_PORT="${SPINE_CONSOLE_PORT:-8080}"
  export SPINE_CONSOLE_GATEWAY_URL="${SPINE_CONSOLE_GATEWAY_URL:-http://127.0.0.1:$PORT}"
  echo "==> starting the console (gateway $SPINE_CONSOLE_GATEWAY_URL)"
  start_one "${CONSOLE%%=*}" "${CONSOLE#*=}"
  alive console || return 0 # not installed: start_one said so
  echo "==> waiting for the console on port $SPINE_CONSOLE_PORT (/healthz)"
  if ! python3 - "$SPINE_CONSOLE_PORT" "$ROOT/scripts" <<'PY'
import sys, time, urllib.request
port = sys.argv[1]
sys.path.insert(0, sys.argv[2])
from procs import running  # an exited console is a zombie until this script reaps it
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    if not running("console"):
        sys.exit("the console exited")
    time.sleep(0.2)
sys.exit("the console did not answer /healthz within 60 s")
PY
  then
    echo "!!  last console log lines:" >&2
    tail -n 30 "$LOGS/console.log" >&2 || true
    return 1
  fi
}

stop_one() {
  local name=$1 pid
  if alive "$name"; then
    pid=$(cat "$RUN/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    echo "    $name: stopped"
  fi
  rm -f "$RUN/$name.pid" "$RUN/$name.identity"
}

down() {
  stop_one "${CONSOLE%%=*}"
  for (( i=${#SERVICES[@]}-1; i>=0; i-- )); do stop_one "${SERVICES[$i]%%=*}"; done
}

status() {
  for entry in "${SERVICES[@]}" "$CONSOLE"; do
    name="${entry%%=*}"
    if alive "$name"; then echo "$name: running (pid $(cat "$RUN/$name.pid"))"; else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  expected) expected_services ;;
  *) echo "usage: $0 up|down|status|expected" >&2; exit 2 ;;
esac
