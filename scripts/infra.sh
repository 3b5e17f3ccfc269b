#!/usr/bin/env bash
# Local infrastructure for AI Spine: Kafka (KRaft, from Maven Central jars), PostgreSQL and
# Redis (Debian packages). No Docker needed.
#
#   scripts/infra.sh up [kafka|postgres|redis...]
#                                  start (or reuse) everything (or the components named), wait
#                                  until ready, write .spine/infra.env
#   scripts/infra.sh down [--purge] [kafka|postgres|redis...]
#                                  stop what this script started (data is kept unless --purge)
#   scripts/infra.sh purge         down + delete Kafka/PostgreSQL/Redis data and logs
#                                  (keeps the downloaded Kafka jars and .spine/credentials)
#   scripts/infra.sh status        one line per component; exit 3 if something is not up
#   scripts/infra.sh kafka-jars    fetch the broker jars if needed (as `up` does) and print their
#                                  directory (a test's throwaway broker runs from them)
#   scripts/infra.sh kafka-restart [--kill]
#                                  stop the broker this script started (SIGTERM, or SIGKILL
#                                  with --kill), start it again and wait until it is ready
#                                  (used by `make chaos`); fails for a broker it did not start
#
# Environment overrides (then that component is not started, only waited for):
#   KAFKA_BOOTSTRAP_SERVERS   e.g. 10.0.0.5:9092
#   DATABASE_URL              e.g. postgresql://user:pw@db:5432/spine
#   REDIS_URL                 e.g. redis://cache:6379/0
# Ports (defaults 9092/9093, 5432, 6379): SPINE_KAFKA_PORT, SPINE_KAFKA_CONTROLLER_PORT,
#   SPINE_PG_PORT, SPINE_REDIS_PORT (all on 127.0.0.1).
# Kafka security: SPINE_KAFKA_SECURITY=sasl (client listener SASL_PLAINTEXT + SCRAM-SHA-512,
#   controller SASL PLAIN, StandardAuthorizer, no ACL = no access; docs/security.md) or
#   plaintext (no login, no ACLs: every local process may read and write every topic).
#   Unset: sasl (the default; plaintext only when asked for). With sasl:
#   * the admin, broker and controller credentials are made once, 0600, in
#     .spine/credentials/{admin,broker,controller}.json; admin and broker become SCRAM users
#     at format time (StorageTool format --add-scram, fresh data directory only);
#   * an UNSECURED data directory (formatted by plaintext mode, or by an older infra.sh) is
#     MIGRATED in place, loudly: nothing is deleted, the SCRAM users are added through one
#     broker start where only the admin may log in (scripts/kafka_scram.py);
#   * a broker answering on the port that we did not start is reused only if it refuses a
#     client without credentials and accepts our admin; an unsecured one is refused;
#   * .spine/infra.env also gets KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM,
#     KAFKA_CREDENTIALS_FILE (the admin's: for tools and tests) and
#     SPINE_KAFKA_CREDENTIALS_DIR (where `spine-admin issue-services` writes one file per
#     service; scripts/stack.sh gives each process its own).
#   A secured data directory is never served with plaintext: that is refused.
# State: SPINE_STATE_DIR (default <repo>/.spine; a test runs a broker of its own in a temp
#   one), SPINE_KAFKA_LIBS (default $SPINE_STATE_DIR/kafka/libs: share the downloaded jars).
# Tuning: SPINE_INFRA_TIMEOUT (seconds per component, default 90),
#         SPINE_KAFKA_HEAP_OPTS (default "-Xms256m -Xmx768m"),
#         MAVEN_OPTS (e.g. -Dmaven.repo.local=/tmp/m2 for a cold download).
#
# All state lives under .spine/ in the repo root (git-ignored):
#   .spine/kafka/libs  broker jars (+ .spine-stamp)   .spine/kafka/data  KRaft log dir
#   .spine/postgres/data  cluster owned by user postgres   .spine/redis  redis working dir
#   .spine/run/*.pid   .spine/logs/{kafka,postgres,redis,maven}.log   .spine/infra.env
#   .spine/kafka/security  the mode the data dir was formatted for (sasl|plaintext)
#   .spine/kafka/server.properties (0600)   .spine/credentials/<principal>.json (0600, dir 0700)
#
# Use the effective endpoints with:  set -a; . .spine/infra.env; set +a
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SPINE="${SPINE_STATE_DIR:-$ROOT/.spine}"
RUN="$SPINE/run"
LOGS="$SPINE/logs"
DEPLOY="$ROOT/deploy/local"
TIMEOUT="${SPINE_INFRA_TIMEOUT:-90}"

KAFKA_HOST=127.0.0.1
KAFKA_PORT="${SPINE_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${SPINE_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_DIR="$SPINE/kafka"
KAFKA_LIBS="${SPINE_KAFKA_LIBS:-$KAFKA_DIR/libs}"
KAFKA_DATA="$KAFKA_DIR/data"
# Written when the data directory is formatted (or migrated): the mode it was made for. No
# marker beside an existing meta.properties = formatted by an infra.sh without security.
KAFKA_MODE_FILE="$KAFKA_DIR/security"
# Unset: a secured data directory stays secured; otherwise this default.
KAFKA_SECURITY_DEFAULT=sasl
KAFKA_SECURITY="${SPINE_KAFKA_SECURITY:-}"
CREDS="$SPINE/credentials"
KAFKA_PROPS="$KAFKA_DIR/server.properties"
KAFKA_POM="$DEPLOY/pom.xml"
KAFKA_LOG4J="$DEPLOY/kafka/log4j2.xml"
KAFKA_HEAP_OPTS="${SPINE_KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM")"

PG_HOST=127.0.0.1
PG_PORT="${SPINE_PG_PORT:-5432}"
PG_DIR="$SPINE/postgres"
PGDATA_DIR="$PG_DIR/data"
PG_DEFAULT_URL="postgresql://spine:spine@$PG_HOST:$PG_PORT/spine"

REDIS_HOST=127.0.0.1
REDIS_PORT="${SPINE_REDIS_PORT:-6379}"
REDIS_DEFAULT_URL="redis://$REDIS_HOST:$REDIS_PORT/0"

export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------------------- helpers
say() { printf '==> %s\n' "$*"; }
warn() { printf '==> WARNING: %s\n' "$*" >&2; }
die() {
  printf '==> ERROR: %s\n' "$*" >&2
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [ "$(id -u)" = 0 ]; }

SUDO=""
is_root || SUDO="sudo"

APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    say "apt-get update"
    $SUDO apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >>"$LOGS/apt.log" 2>&1 || {
    tail -n 30 "$LOGS/apt.log" >&2
    die "apt-get install $* failed (full output: $LOGS/apt.log)"
  }
}

# pid_of FILE PATTERN: prints the pid in FILE if that process is alive and its command line
# matches PATTERN (guards against recycled pids); fails otherwise.
pid_of() {
  local file="$1" pattern="$2" pid
  [ -s "$file" ] || return 1
  pid="$(head -n 1 "$file" | tr -dc '0-9')"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern" || return 1
  printf '%s\n' "$pid"
}

# stop_pid PID NAME SECONDS: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local pid="$1" name="$2" secs="$3" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  warn "$name (pid $pid) did not stop within ${secs}s, killing it"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.5
}

tcp_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

# url_hostport URL DEFAULT_PORT -> "host port"
url_hostport() {
  python3 - "$1" "$2" <<'PY'
import sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or int(sys.argv[2]))
PY
}

tail_log() {
  local file="$1"
  [ -f "$file" ] || return 0
  printf -- '---- last lines of %s ----\n' "$file" >&2
  tail -n "${2:-40}" "$file" >&2
  printf -- '----\n' >&2
}

ensure_dirs() {
  mkdir -p "$RUN" "$LOGS"
}

ensure_python3() {
  have python3 || apt_install python3
}

# ---------------------------------------------------------------------------- kafka
kafka_secured() { [ "$KAFKA_SECURITY" = sasl ]; }

# SPINE_KAFKA_SECURITY, or when unset: the default (sasl); a secured data directory is
# never served plaintext (kafka_start refuses).
kafka_resolve_security() {
  if [ -z "$KAFKA_SECURITY" ]; then
    if [ "$(kafka_data_mode)" = sasl ]; then KAFKA_SECURITY=sasl; else KAFKA_SECURITY="$KAFKA_SECURITY_DEFAULT"; fi
  fi
  case "$KAFKA_SECURITY" in
    sasl | plaintext) ;;
    *) die "SPINE_KAFKA_SECURITY must be 'sasl' or 'plaintext' (got '$KAFKA_SECURITY')" ;;
  esac
}

# The credentials file the readiness probe logs in with: our admin's when secured; for an
# external broker, KAFKA_CREDENTIALS_FILE if the environment names one. Empty: no login.
KAFKA_PROBE_CREDENTIALS=""

kafka_probe() { # BOOTSTRAP TIMEOUT [--quiet|--warm]
  local login=()
  [ -z "$KAFKA_PROBE_CREDENTIALS" ] || login=(--credentials "$KAFKA_PROBE_CREDENTIALS")
  python3 "$ROOT/scripts/kafka_ready.py" --bootstrap "$1" --timeout "$2" "${login[@]}" ${3:-}
}

# True when a client WITHOUT credentials gets metadata: an unsecured broker. A SASL listener
# answers ApiVersions, then closes the connection at the Metadata request.
kafka_served_anonymously() { # BOOTSTRAP
  python3 "$ROOT/scripts/kafka_ready.py" --bootstrap "$1" --timeout 0 --quiet
}

kafka_jars_stamp() {
  printf 'kafka=%s pom=%s\n' "$KAFKA_VERSION" "$(sha256sum "$KAFKA_POM" | cut -c1-16)"
}

kafka_install_jars() {
  local stamp want t0 tmp
  stamp="$KAFKA_LIBS/.spine-stamp"
  want="$(kafka_jars_stamp)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  have java || apt_install openjdk-17-jre-headless
  have mvn || apt_install maven
  say "kafka: downloading Kafka $KAFKA_VERSION jars with Maven (first run, ~1 min)..."
  t0="$(now)"
  tmp="$KAFKA_LIBS.tmp"
  rm -rf "$tmp"
  mkdir -p "$(dirname "$KAFKA_LIBS")"
  if ! mvn -B -q -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$LOGS/maven.log" 2>&1; then
    tail_log "$LOGS/maven.log" 40
    die "kafka: Maven could not fetch the broker jars (full output: $LOGS/maven.log)"
  fi
  [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka: kafka_2.13-$KAFKA_VERSION.jar missing after Maven run"
  echo "$want" >"$tmp/.spine-stamp"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
  say "kafka: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $KAFKA_LIBS ($(since "$t0"))"
}

kafka_jvm_cmd() { # prints nothing; fills KAFKA_CMD with the java command line
  # shellcheck disable=SC2206 # heap opts are meant to be word-split
  KAFKA_CMD=(java $KAFKA_HEAP_OPTS -cp "$KAFKA_LIBS/*"
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dspine.kafka.log.file="$LOGS/kafka.log"
    -Dkafka.logs.dir="$LOGS")
}

kafka_java() { # main-class args...
  kafka_jvm_cmd
  "${KAFKA_CMD[@]}" "$@"
}

# The admin, broker and controller credentials files, made once (0600 in a 0700 directory).
kafka_credentials() {
  python3 "$ROOT/scripts/kafka_config.py" credentials "$CREDS" admin broker controller ||
    die "kafka: could not make the credentials files under $CREDS"
}

kafka_render_config() { # [--migration]
  local login=()
  mkdir -p "$KAFKA_DATA"
  kafka_secured && login=(--credentials "$CREDS")
  python3 "$ROOT/scripts/kafka_config.py" render --templates "$DEPLOY/kafka" --out "$KAFKA_PROPS" \
    --security "$KAFKA_SECURITY" --host "$KAFKA_HOST" --port "$KAFKA_PORT" \
    --controller-port "$KAFKA_CONTROLLER_PORT" --data "$KAFKA_DATA" "${login[@]}" "$@" ||
    die "kafka: could not render $KAFKA_PROPS"
}

kafka_data_mode() { # none | plaintext | sasl: what the data directory was formatted for
  if [ ! -f "$KAFKA_DATA/meta.properties" ]; then
    echo none
  elif [ -s "$KAFKA_MODE_FILE" ]; then
    head -n 1 "$KAFKA_MODE_FILE"
  else
    echo plaintext # formatted before infra.sh knew about security
  fi
}

kafka_format_once() {
  local id args="$CREDS/.storage-format.args" out="$LOGS/kafka-format.log"
  [ -f "$KAFKA_DATA/meta.properties" ] && return 0
  if [ -s "$KAFKA_DIR/cluster.id" ]; then
    id="$(cat "$KAFKA_DIR/cluster.id")"
  else
    # what `StorageTool random-uuid` prints (a url-safe base64 UUID, never starting with
    # '-'), without starting a JVM for it
    id="$(python3 -c 'import base64, uuid
while (i := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"): pass
print(i)')"
    [ -n "$id" ] || die "kafka: could not generate a cluster id"
    echo "$id" >"$KAFKA_DIR/cluster.id"
  fi
  # The format's own output stays private: a refused --add-scram may echo its argument.
  (umask 077 && : >"$out")
  if kafka_secured; then
    say "kafka: formatting storage (cluster id $id) with the SCRAM-SHA-512 users admin and broker"
    # java @file: the passwords never appear on a command line (ps shows those to everyone)
    python3 "$ROOT/scripts/kafka_config.py" scram-argfile --out "$args" --credentials "$CREDS" \
      --users admin,broker -- kafka.tools.StorageTool format -t "$id" -c "$KAFKA_PROPS" \
      --standalone || die "kafka: could not prepare the storage format"
    if ! kafka_java "@$args" >>"$out" 2>&1; then
      rm -f "$args"
      tail_log "$out" 20
      die "kafka: storage format failed"
    fi
    rm -f "$args"
  else
    say "kafka: formatting storage (cluster id $id)"
    kafka_java kafka.tools.StorageTool format -t "$id" -c "$KAFKA_PROPS" --standalone \
      >>"$out" 2>&1 || {
      tail_log "$out" 20
      die "kafka: storage format failed"
    }
  fi
  echo "$KAFKA_SECURITY" >"$KAFKA_MODE_FILE"
}

kafka_launch() { # [what]: start the broker in the background; its pid goes to kafka.pid
  say "kafka: starting Kafka $KAFKA_VERSION (KRaft, single node, $KAFKA_SECURITY) on $KAFKA_HOST:$KAFKA_PORT${1:+ $1}"
  printf '\n===== %s infra.sh: starting kafka %s (%s) =====\n' "$(date -Is)" "$KAFKA_VERSION" \
    "$KAFKA_SECURITY${1:+ $1}" >>"$LOGS/kafka.log"
  # setsid: own session, so a Ctrl-C in the calling shell does not kill the broker.
  # The inner bash writes its own pid, then execs java (same pid).
  # 9>&-: do not hand the infra.sh lock to the daemon.
  kafka_jvm_cmd
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/kafka.pid" \
    "${KAFKA_CMD[@]}" kafka.Kafka "$KAFKA_PROPS" </dev/null >>"$LOGS/kafka.log" 2>&1 9>&- &
}

kafka_stop_launched() { # stop the broker kafka_launch just started (its pid file may lag)
  local pid i
  for ((i = 0; i < 50; i++)); do
    pid="$(pid_of "$RUN/kafka.pid" kafka.Kafka 2>/dev/null)" && break
    sleep 0.1
  done
  [ -n "${pid:-}" ] && stop_pid "$pid" kafka 60
  rm -f "$RUN/kafka.pid"
}

# What an existing data directory holds, for the migration's message.
kafka_data_summary() {
  python3 - "$KAFKA_DATA" <<'PY'
import os, re, sys
root = sys.argv[1]
topics: dict[str, list[int]] = {}
for name in os.listdir(root):
    m = re.fullmatch(r"(.+)-(\d+)", name)
    path = os.path.join(root, name)
    if not m or not os.path.isdir(path) or m.group(1) == "__cluster_metadata":
        continue
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    entry = topics.setdefault(m.group(1), [0, 0])
    entry[0] += 1
    entry[1] += size
def human(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
ours = sorted(t for t in topics if not t.startswith("__"))
total = human(sum(v[1] for v in topics.values()))
print(f"{len(ours)} topics, {sum(topics[t][0] for t in ours)} partitions, {total} on disk")
for t in ours[:12]:
    print(f"  {t}: {topics[t][0]} partitions, {human(topics[t][1])}")
if len(ours) > 12:
    print(f"  ... and {len(ours) - 12} more topics")
PY
}

# An UNSECURED data directory, SPINE_KAFKA_SECURITY=sasl: migrate it in place. Format cannot
# add SCRAM users to it and the controller does not serve AlterUserScramCredentials, so the
# broker runs once with the secured config plus SASL PLAIN for the static admin on the
# client listener (only the admin can log in; the authorizer is on), kafka_scram.py makes
# admin and broker SCRAM users, and the broker restarts SCRAM-only. Nothing is deleted.
kafka_migrate() {
  local line rc
  {
    printf '==> WARNING: %s\n' "=============================================================================="
    printf '==> WARNING: kafka: %s was formatted UNSECURED (no login, no ACLs:\n' "$KAFKA_DATA"
    printf '==> WARNING: any local process could read and write every topic), and\n'
    printf '==> WARNING: SPINE_KAFKA_SECURITY=sasl: MIGRATING IT IN PLACE to SASL/SCRAM.\n'
    printf '==> WARNING: Nothing is deleted. It holds:\n'
    kafka_data_summary | while IFS= read -r line; do printf '==> WARNING:   %s\n' "$line"; done
    printf '==> WARNING: From now on every client must log in (KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT\n'
    printf '==> WARNING: and a credentials file from %s), services included;\n' "$CREDS"
    printf '==> WARNING: processes still running without credentials will be refused. The data\n'
    printf '==> WARNING: directory cannot be served unsecured again (purge deletes it).\n'
    printf '==> WARNING: %s\n' "=============================================================================="
  } >&2
  kafka_render_config --migration
  kafka_launch "(migration run: only the admin may log in)"
  rc=0
  python3 "$ROOT/scripts/kafka_scram.py" --bootstrap "$KAFKA_HOST:$KAFKA_PORT" \
    --login "$CREDS/admin.json" --mechanism PLAIN --upsert "$CREDS/admin.json" \
    --upsert "$CREDS/broker.json" --timeout "$TIMEOUT" >>"$LOGS/kafka.log" 2>&1 || rc=$?
  kafka_stop_launched
  if [ "$rc" != 0 ]; then
    tail_log "$LOGS/kafka.log" 30
    die "kafka: the migration failed (log: $LOGS/kafka.log); $KAFKA_DATA is unchanged and still UNSECURED. Retry, run it unsecured with SPINE_KAFKA_SECURITY=plaintext, or start over empty and secured with scripts/infra.sh purge (DELETES the Kafka, PostgreSQL and Redis data)"
  fi
  echo sasl >"$KAFKA_MODE_FILE"
  warn "kafka: migrated: admin and broker are SCRAM-SHA-512 users of $KAFKA_DATA; starting it secured"
}

KAFKA_MODE="" # external | running | reused | started
KAFKA_T0=""
KAFKA_BOOTSTRAP=""

kafka_start() {
  local pid mode
  KAFKA_T0="$(now)"
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    KAFKA_MODE=external
    KAFKA_BOOTSTRAP="$KAFKA_BOOTSTRAP_SERVERS"
    KAFKA_PROBE_CREDENTIALS="${KAFKA_CREDENTIALS_FILE:-}"
    say "kafka: KAFKA_BOOTSTRAP_SERVERS is set, waiting for $KAFKA_BOOTSTRAP"
    return 0
  fi
  KAFKA_BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"
  if kafka_secured; then KAFKA_PROBE_CREDENTIALS="$CREDS/admin.json"; fi
  mode="$(kafka_data_mode)"
  if pid="$(pid_of "$RUN/kafka.pid" kafka.Kafka)"; then
    if kafka_secured && [ "$mode" != sasl ]; then
      warn "kafka: the broker infra.sh started (pid $pid) serves an UNSECURED data directory; stopping it to secure it"
      stop_pid "$pid" kafka 60
    elif ! kafka_secured && [ "$mode" = sasl ]; then
      die "kafka: the running broker (pid $pid) is secured; it stays so. Run with SPINE_KAFKA_SECURITY=sasl (or stop it: scripts/infra.sh down)"
    else
      KAFKA_MODE=running
      return 0
    fi
  fi
  rm -f "$RUN/kafka.pid"
  if kafka_secured; then
    if kafka_served_anonymously "$KAFKA_BOOTSTRAP"; then
      die "kafka: an UNSECURED broker (not started by this infra.sh) answers on $KAFKA_BOOTSTRAP: it serves clients without credentials, so it is not reused with SPINE_KAFKA_SECURITY=sasl. Stop it, or choose SPINE_KAFKA_PORT and SPINE_KAFKA_CONTROLLER_PORT"
    fi
    if tcp_open "$KAFKA_HOST" "$KAFKA_PORT"; then
      KAFKA_MODE=reused
      say "kafka: port $KAFKA_PORT is open (not started by us): reusing it only if it refuses anonymous clients and accepts $CREDS/admin.json"
      return 0
    fi
  else
    if kafka_probe "$KAFKA_BOOTSTRAP" 0 --quiet; then
      KAFKA_MODE=reused
      say "kafka: something already answers on $KAFKA_BOOTSTRAP, reusing it"
      return 0
    fi
    if tcp_open "$KAFKA_HOST" "$KAFKA_PORT"; then
      # Open but not answering yet: maybe a broker (not ours) that is still starting.
      KAFKA_MODE=reused
      say "kafka: port $KAFKA_PORT is open but not serving yet (not started by us), waiting for it"
      return 0
    fi
  fi
  kafka_install_jars
  if kafka_secured; then
    kafka_credentials
    [ "$mode" != plaintext ] || kafka_migrate
  elif [ "$mode" = sasl ]; then
    die "kafka: $KAFKA_DATA is secured (SASL/SCRAM); SPINE_KAFKA_SECURITY=plaintext would serve it to every local process without a login. Run with SPINE_KAFKA_SECURITY=sasl, or delete it (and PostgreSQL's and Redis's data) with scripts/infra.sh purge"
  fi
  kafka_render_config
  kafka_format_once
  kafka_launch
  KAFKA_MODE=started
}

kafka_wait() {
  local deadline pid
  deadline=$(($(date +%s) + TIMEOUT))
  while :; do
    if [ "$KAFKA_MODE" = reused ] && kafka_secured && kafka_served_anonymously "$KAFKA_BOOTSTRAP"; then
      die "kafka: the broker on $KAFKA_BOOTSTRAP (not started by this infra.sh) serves clients without credentials: an UNSECURED broker is not reused with SPINE_KAFKA_SECURITY=sasl. Stop it, or choose SPINE_KAFKA_PORT and SPINE_KAFKA_CONTROLLER_PORT"
    fi
    if kafka_probe "$KAFKA_BOOTSTRAP" 0 --quiet; then
      break
    fi
    if [ "$KAFKA_MODE" = started ] && [ -s "$RUN/kafka.pid" ] && ! pid_of "$RUN/kafka.pid" kafka.Kafka >/dev/null; then
      tail_log "$LOGS/kafka.log" 40
      rm -f "$RUN/kafka.pid"
      die "kafka: the broker process exited during startup (log: $LOGS/kafka.log)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      kafka_probe "$KAFKA_BOOTSTRAP" 0 || true
      [ "$KAFKA_MODE" = external ] || tail_log "$LOGS/kafka.log" 40
      if [ "$KAFKA_MODE" = reused ] && kafka_secured; then
        die "kafka: the broker on $KAFKA_BOOTSTRAP (not started by this infra.sh) did not accept $CREDS/admin.json within ${TIMEOUT}s: a secured broker of another installation? Stop it, or choose SPINE_KAFKA_PORT and SPINE_KAFKA_CONTROLLER_PORT"
      fi
      die "kafka: not ready at $KAFKA_BOOTSTRAP after ${TIMEOUT}s"
    fi
    sleep 0.3
  done
  if [ "$KAFKA_MODE" != external ]; then
    # Create __consumer_offsets / __transaction_state now, not in the first test.
    kafka_probe "$KAFKA_BOOTSTRAP" "$(( deadline - $(date +%s) > 5 ? deadline - $(date +%s) : 5 ))" --warm >/dev/null || {
      tail_log "$LOGS/kafka.log" 40
      die "kafka: group/transaction coordinators not available at $KAFKA_BOOTSTRAP"
    }
  fi
  pid=""
  [ "$KAFKA_MODE" = external ] || pid="$(pid_of "$RUN/kafka.pid" kafka.Kafka 2>/dev/null || true)"
  say "kafka: ready at $KAFKA_BOOTSTRAP in $(since "$KAFKA_T0") ($KAFKA_MODE${pid:+, pid $pid}, $([ -n "$KAFKA_PROBE_CREDENTIALS" ] && echo "SASL/SCRAM, logged in as $(basename "$KAFKA_PROBE_CREDENTIALS" .json)" || echo "no login"))"
}

kafka_down() {
  local pid
  if pid="$(pid_of "$RUN/kafka.pid" kafka.Kafka)"; then
    say "kafka: stopping (pid $pid)"
    stop_pid "$pid" kafka 60
  else
    say "kafka: not started by infra.sh, nothing to stop"
  fi
  rm -f "$RUN/kafka.pid"
}

kafka_status() {
  local pid mode
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    KAFKA_PROBE_CREDENTIALS="${KAFKA_CREDENTIALS_FILE:-}"
    if kafka_probe "$KAFKA_BOOTSTRAP_SERVERS" 0 --quiet; then
      echo "kafka:    external  $KAFKA_BOOTSTRAP_SERVERS (KAFKA_BOOTSTRAP_SERVERS)"
      return 0
    fi
    echo "kafka:    stopped   $KAFKA_BOOTSTRAP_SERVERS (KAFKA_BOOTSTRAP_SERVERS) not answering"
    return 1
  fi
  mode="$(kafka_data_mode)"
  if [ "$mode" = sasl ] || kafka_secured; then KAFKA_PROBE_CREDENTIALS="$CREDS/admin.json"; fi
  [ "$mode" != none ] || mode="$KAFKA_SECURITY"
  if pid="$(pid_of "$RUN/kafka.pid" kafka.Kafka)"; then
    if kafka_probe "$KAFKA_HOST:$KAFKA_PORT" 0 --quiet; then
      echo "kafka:    running   $KAFKA_HOST:$KAFKA_PORT (pid $pid, Kafka $KAFKA_VERSION, $mode)"
      return 0
    fi
    echo "kafka:    starting  $KAFKA_HOST:$KAFKA_PORT (pid $pid, not answering yet)"
    return 1
  fi
  if kafka_probe "$KAFKA_HOST:$KAFKA_PORT" 0 --quiet; then
    echo "kafka:    reused    $KAFKA_HOST:$KAFKA_PORT (not started by infra.sh)"
    return 0
  fi
  echo "kafka:    stopped"
  return 1
}

# ---------------------------------------------------------------------------- postgres
pg_bin() { # newest installed server bin dir
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$d" ] && [ -x "$d/initdb" ] || return 1
  printf '%s\n' "$d"
}

# Run a command as the postgres OS user (the server refuses to run as root).
as_pg() {
  if is_root; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_ready() { # HOST PORT
  if have pg_isready; then
    pg_isready -q -h "$1" -p "$2" -U postgres -d postgres -t 2
  else
    tcp_open "$1" "$2"
  fi
}

pg_ours_pid() {
  pid_of "$PGDATA_DIR/postmaster.pid" postgres
}

# Make sure the postgres user can reach and own .spine/postgres.
pg_prepare_dir() {
  local d
  mkdir -p "$PG_DIR"
  is_root || return 0
  chown postgres:postgres "$PG_DIR"
  chmod 700 "$PG_DIR"
  if ! runuser -u postgres -- test -x "$PG_DIR"; then
    # Walk from / down so that each check sees its parents already traversable.
    d=""
    local part
    local -a parts
    IFS=/ read -r -a parts <<<"${PG_DIR#/}"
    for part in "${parts[@]}"; do
      d="$d/$part"
      [ "$d" = "$PG_DIR" ] && break
      if ! runuser -u postgres -- test -x "$d"; then
        say "postgres: chmod o+x $d (the postgres user must traverse it to reach .spine/postgres)"
        chmod o+x "$d"
      fi
    done
  fi
  runuser -u postgres -- test -w "$PG_DIR" || die "postgres: user postgres cannot write $PG_DIR"
  touch "$LOGS/postgres.log"
  chown postgres:postgres "$LOGS/postgres.log"
}

pg_configure() {
  # Rewritten on every start so changes here apply after a restart.
  cat >"$PGDATA_DIR/spine.conf" <<EOF
# Managed by scripts/infra.sh (rewritten on every start).
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = ''
max_connections = 200
shared_buffers = 128MB
EOF
  cat >"$PGDATA_DIR/pg_hba.conf" <<'EOF'
# Managed by scripts/infra.sh: a local development cluster, trust on loopback only.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
host    all       all   ::1/128       trust
EOF
  grep -q "^include_if_exists = 'spine.conf'" "$PGDATA_DIR/postgresql.conf" ||
    echo "include_if_exists = 'spine.conf'" >>"$PGDATA_DIR/postgresql.conf"
  is_root && chown postgres:postgres "$PGDATA_DIR/spine.conf" "$PGDATA_DIR/pg_hba.conf"
  return 0
}

PG_ENSURE_SQL="
DO \$\$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'spine') THEN
    CREATE ROLE spine LOGIN CREATEDB PASSWORD 'spine';
  END IF;
END\$\$;
SELECT 'CREATE DATABASE spine OWNER spine' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'spine')
\\gexec
"

# Create role/database spine. Ours: over TCP as postgres (trust). Someone else's: try the
# postgres OS user over the default socket (peer auth), then TCP.
pg_ensure_role_db() {
  local mode="$1"
  if [ "$mode" = started ] || [ "$mode" = running ]; then
    psql -X -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
      <<<"$PG_ENSURE_SQL" >/dev/null || die "postgres: could not create role/database spine"
    return 0
  fi
  if is_root && as_pg psql -X -q -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 <<<"$PG_ENSURE_SQL" >/dev/null 2>&1; then
    return 0
  fi
  if psql -X -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    <<<"$PG_ENSURE_SQL" >/dev/null 2>&1; then
    return 0
  fi
  if psql -X -q "$PG_DEFAULT_URL" -c 'select 1' >/dev/null 2>&1; then
    return 0
  fi
  warn "postgres: could not create role/database 'spine' on the server at $PG_HOST:$PG_PORT (not ours); $PG_DEFAULT_URL may not work"
}

PG_MODE=""
pg_reuse() { # MESSAGE
  PG_MODE=reused
  say "postgres: $1, reusing it"
  have psql || apt_install postgresql-client
  pg_ensure_role_db reused
}

pg_up() {
  local t0 host port bin deadline
  t0="$(now)"
  if [ -n "${DATABASE_URL:-}" ]; then
    read -r host port <<<"$(url_hostport "$DATABASE_URL" 5432)"
    say "postgres: DATABASE_URL is set, waiting for $host:$port"
    deadline=$(($(date +%s) + TIMEOUT))
    until pg_ready "$host" "$port"; do
      [ "$(date +%s)" -lt "$deadline" ] || die "postgres: $host:$port (DATABASE_URL) not ready after ${TIMEOUT}s"
      sleep 0.5
    done
    PG_MODE=external
    say "postgres: ready at $host:$port in $(since "$t0") (external)"
    return 0
  fi
  if pg_ours_pid >/dev/null; then
    PG_MODE=running
  elif pg_ready "$PG_HOST" "$PG_PORT"; then
    pg_reuse "something already answers on $PG_HOST:$PG_PORT"
  else
    if ! bin="$(pg_bin)" || ! have psql; then
      apt_install postgresql
      bin="$(pg_bin)" || die "postgres: initdb not found under /usr/lib/postgresql/*/bin after install"
    fi
    if pg_ready "$PG_HOST" "$PG_PORT"; then
      # The package's postinst may have started its own cluster on 5432.
      pg_reuse "the packaged cluster answers on $PG_HOST:$PG_PORT after install"
    else
      pg_prepare_dir
      if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
        say "postgres: initdb .spine/postgres/data ($("$bin/postgres" --version | awk '{print $3}'))"
        rm -rf "$PGDATA_DIR"
        as_pg "$bin/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --no-locale \
          >>"$LOGS/postgres.log" 2>&1 || {
          tail_log "$LOGS/postgres.log" 30
          die "postgres: initdb failed"
        }
      fi
      pg_configure
      # Left by a killed server (its pid is not a live postgres, or pg_ours_pid would have matched).
      rm -f "$PGDATA_DIR/postmaster.pid"
      say "postgres: starting cluster .spine/postgres/data on $PG_HOST:$PG_PORT"
      as_pg "$bin/pg_ctl" -D "$PGDATA_DIR" -l "$LOGS/postgres.log" -w -t "$TIMEOUT" start \
        >/dev/null 9>&- || {
        tail_log "$LOGS/postgres.log" 30
        die "postgres: pg_ctl start failed"
      }
      PG_MODE=started
    fi
  fi
  if [ "$PG_MODE" = reused ]; then
    say "postgres: ready at $PG_HOST:$PG_PORT in $(since "$t0") (reused)"
    return 0
  fi
  deadline=$(($(date +%s) + TIMEOUT))
  until pg_ready "$PG_HOST" "$PG_PORT"; do
    [ "$(date +%s)" -lt "$deadline" ] || {
      tail_log "$LOGS/postgres.log" 30
      die "postgres: not ready after ${TIMEOUT}s"
    }
    sleep 0.3
  done
  head -n 1 "$PGDATA_DIR/postmaster.pid" >"$RUN/postgres.pid"
  pg_ensure_role_db "$PG_MODE"
  say "postgres: ready at $PG_HOST:$PG_PORT in $(since "$t0") ($PG_MODE, pid $(cat "$RUN/postgres.pid"))"
}

pg_down() {
  local pid bin
  if pid="$(pg_ours_pid)"; then
    say "postgres: stopping (pid $pid)"
    if bin="$(pg_bin)"; then
      as_pg "$bin/pg_ctl" -D "$PGDATA_DIR" stop -m fast -w -t 60 >/dev/null || stop_pid "$pid" postgres 30
    else
      stop_pid "$pid" postgres 30
    fi
  else
    say "postgres: not started by infra.sh, nothing to stop"
  fi
  rm -f "$RUN/postgres.pid"
}

pg_status() {
  local pid host port
  if [ -n "${DATABASE_URL:-}" ]; then
    read -r host port <<<"$(url_hostport "$DATABASE_URL" 5432)"
    if pg_ready "$host" "$port"; then
      echo "postgres: external  $host:$port (DATABASE_URL)"
      return 0
    fi
    echo "postgres: stopped   $host:$port (DATABASE_URL) not answering"
    return 1
  fi
  if pid="$(pg_ours_pid)"; then
    echo "postgres: running   $PG_HOST:$PG_PORT (pid $pid, data .spine/postgres/data)"
    return 0
  fi
  if pg_ready "$PG_HOST" "$PG_PORT"; then
    echo "postgres: reused    $PG_HOST:$PG_PORT (not started by infra.sh)"
    return 0
  fi
  echo "postgres: stopped"
  return 1
}

# ---------------------------------------------------------------------------- redis
# PING over bash's /dev/tcp: needs no redis-cli. NOAUTH also proves a live server.
redis_ping() { # HOST PORT
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "PING\r\n" >&3 && IFS= read -r line <&3 &&
    [[ $line == +PONG* || $line == -NOAUTH* || $line == -ERR*auth* ]]' "$1" "$2" 2>/dev/null
}

redis_ours_pid() { pid_of "$RUN/redis.pid" redis-server; }

REDIS_MODE=""
redis_up() {
  local t0 host port deadline pid
  t0="$(now)"
  if [ -n "${REDIS_URL:-}" ]; then
    read -r host port <<<"$(url_hostport "$REDIS_URL" 6379)"
    say "redis: REDIS_URL is set, waiting for $host:$port"
    REDIS_MODE=external
  else
    host="$REDIS_HOST"
    port="$REDIS_PORT"
    if redis_ours_pid >/dev/null; then
      REDIS_MODE=running
    elif redis_ping "$host" "$port"; then
      REDIS_MODE=reused
      say "redis: something already answers on $host:$port, reusing it"
    else
      rm -f "$RUN/redis.pid"
      if ! have redis-server; then
        apt_install redis-server
        # The package may have started its own server.
        if redis_ping "$host" "$port"; then
          REDIS_MODE=reused
          say "redis: the freshly installed package server answers on $host:$port, reusing it"
        fi
      fi
      if [ -z "$REDIS_MODE" ]; then
        mkdir -p "$SPINE/redis"
        say "redis: starting redis-server on $host:$port (no persistence)"
        redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
          --dir "$SPINE/redis" --pidfile "$RUN/redis.pid" --logfile "$LOGS/redis.log" >/dev/null 9>&- ||
          die "redis: redis-server failed to start (log: $LOGS/redis.log)"
        REDIS_MODE=started
      fi
    fi
  fi
  deadline=$(($(date +%s) + TIMEOUT))
  until redis_ping "$host" "$port"; do
    [ "$(date +%s)" -lt "$deadline" ] || {
      [ "$REDIS_MODE" = external ] || tail_log "$LOGS/redis.log" 20
      die "redis: $host:$port not answering PING after ${TIMEOUT}s"
    }
    sleep 0.2
  done
  pid=""
  [ "$REDIS_MODE" = external ] || pid="$(redis_ours_pid 2>/dev/null || true)"
  say "redis: ready at $host:$port in $(since "$t0") ($REDIS_MODE${pid:+, pid $pid})"
}

redis_down() {
  local pid
  if pid="$(redis_ours_pid)"; then
    say "redis: stopping (pid $pid)"
    stop_pid "$pid" redis 30
  else
    say "redis: not started by infra.sh, nothing to stop"
  fi
  rm -f "$RUN/redis.pid"
}

redis_status() {
  local pid host port
  if [ -n "${REDIS_URL:-}" ]; then
    read -r host port <<<"$(url_hostport "$REDIS_URL" 6379)"
    if redis_ping "$host" "$port"; then
      echo "redis:    external  $host:$port (REDIS_URL)"
      return 0
    fi
    echo "redis:    stopped   $host:$port (REDIS_URL) not answering"
    return 1
  fi
  if pid="$(redis_ours_pid)"; then
    echo "redis:    running   $REDIS_HOST:$REDIS_PORT (pid $pid)"
    return 0
  fi
  if redis_ping "$REDIS_HOST" "$REDIS_PORT"; then
    echo "redis:    reused    $REDIS_HOST:$REDIS_PORT (not started by infra.sh)"
    return 0
  fi
  echo "redis:    stopped"
  return 1
}

# ---------------------------------------------------------------------------- commands
lock() {
  exec 9>"$RUN/infra.lock"
  flock -w 600 9 || die "another scripts/infra.sh is running (lock $RUN/infra.lock)"
}

write_env() {
  cat >"$SPINE/infra.env.tmp" <<EOF
KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS:-$KAFKA_HOST:$KAFKA_PORT}
DATABASE_URL=${DATABASE_URL:-$PG_DEFAULT_URL}
REDIS_URL=${REDIS_URL:-$REDIS_DEFAULT_URL}
EOF
  if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && kafka_secured; then
    # The operator's login, for tools and tests; scripts/stack.sh gives every process it
    # starts its own file from SPINE_KAFKA_CREDENTIALS_DIR instead (docs/security.md).
    {
      echo "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT"
      echo "KAFKA_SASL_MECHANISM=SCRAM-SHA-512"
      echo "KAFKA_CREDENTIALS_FILE=$CREDS/admin.json"
      echo "SPINE_KAFKA_CREDENTIALS_DIR=$CREDS"
    } >>"$SPINE/infra.env.tmp"
  else
    # an external broker: keep the login the caller gave, so the file still logs in
    local name
    for name in KAFKA_SECURITY_PROTOCOL KAFKA_SASL_MECHANISM KAFKA_CREDENTIALS_FILE \
      SPINE_KAFKA_CREDENTIALS_DIR; do
      if [ -n "${!name:-}" ]; then echo "$name=${!name}" >>"$SPINE/infra.env.tmp"; fi
    done
  fi
  mv "$SPINE/infra.env.tmp" "$SPINE/infra.env"
}

# COMPONENTS: what `up`/`down` act on (all when empty).
COMPONENTS=""
want() { [ -z "$COMPONENTS" ] || [[ " $COMPONENTS " == *" $1 "* ]]; }

set_components() {
  local c
  for c in "$@"; do
    case "$c" in
      kafka | postgres | redis) COMPONENTS="$COMPONENTS $c" ;;
      *) die "unknown component '$c' (kafka, postgres or redis)" ;;
    esac
  done
}

cmd_up() {
  local t0
  t0="$(now)"
  ensure_dirs
  lock
  rm -f "$SPINE/infra.env" # rewritten only when everything is ready
  ensure_python3
  # Kafka first (slowest): its JVM boots while PostgreSQL and Redis start.
  if want kafka; then kafka_start; fi
  if want postgres; then pg_up; fi
  if want redis; then redis_up; fi
  if want kafka; then kafka_wait; fi
  write_env
  say "infra up in $(since "$t0"); endpoints in $SPINE/infra.env:"
  sed 's/^/    /' "$SPINE/infra.env"
}

cmd_down() {
  ensure_dirs
  lock
  if want kafka; then kafka_down; fi
  if want redis; then redis_down; fi
  if want postgres; then pg_down; fi
}

cmd_purge() {
  COMPONENTS=""
  cmd_down
  say "purging Kafka, PostgreSQL and Redis data and logs under $SPINE (keeping the Kafka jars and $CREDS)"
  rm -rf "$KAFKA_DATA" "$KAFKA_DIR/cluster.id" "$KAFKA_PROPS" "$KAFKA_MODE_FILE" \
    "$KAFKA_LIBS.tmp" "$PG_DIR" "$SPINE/redis" "$LOGS" "$SPINE/infra.env"
}

cmd_kafka_restart() {
  local pid t0
  t0="$(now)"
  ensure_dirs
  lock
  pid="$(pid_of "$RUN/kafka.pid" kafka.Kafka)" ||
    die "kafka: the broker was not started by this infra.sh ($RUN/kafka.pid); cannot restart it"
  if [ "${1:-}" = --kill ]; then
    say "kafka: killing (pid $pid, SIGKILL)"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  else
    say "kafka: stopping (pid $pid)"
    stop_pid "$pid" kafka 60
  fi
  rm -f "$RUN/kafka.pid"
  # Ours (the pid file said so): start it here even when KAFKA_BOOTSTRAP_SERVERS names it.
  KAFKA_BOOTSTRAP_SERVERS="" kafka_start
  kafka_wait
  say "kafka: restarted in $(since "$t0")"
}

cmd_status() {
  local rc=0
  have python3 || { echo "kafka:    unknown (python3 missing)"; rc=3; }
  if have python3; then kafka_status || rc=3; fi
  pg_status || rc=3
  redis_status || rc=3
  return "$rc"
}

cmd_kafka_jars() {
  ensure_dirs
  lock
  kafka_install_jars >&2 # stdout is the directory only
  echo "$KAFKA_LIBS"
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'
}

kafka_resolve_security

case "${1:-}" in
  up)
    shift
    set_components "$@"
    cmd_up
    ;;
  down)
    shift
    if [ "${1:-}" = --purge ]; then
      cmd_purge
    else
      set_components "$@"
      cmd_down
    fi
    ;;
  purge) cmd_purge ;;
  status) cmd_status ;;
  kafka-jars) cmd_kafka_jars ;;
  kafka-restart) cmd_kafka_restart "${2:-}" ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
