#!/usr/bin/env bash
# Local infrastructure for AI Spine: Kafka (KRaft, from Maven Central jars), PostgreSQL and
# Redis (Debian packages). No Docker needed.
#
#   scripts/infra.sh up            start (or reuse) everything, wait until ready,
#                                  write .spine/infra.env
#   scripts/infra.sh down [--purge] stop what this script started (data is kept unless --purge)
#   scripts/infra.sh purge         down + delete Kafka/PostgreSQL/Redis data and logs
#                                  (keeps the downloaded Kafka jars)
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
# Tuning: SPINE_INFRA_TIMEOUT (seconds per component, default 90),
#         SPINE_KAFKA_HEAP_OPTS (default "-Xms256m -Xmx768m"),
#         MAVEN_OPTS (e.g. -Dmaven.repo.local=/tmp/m2 for a cold download).
#
# All state lives under .spine/ in the repo root (git-ignored):
#   .spine/kafka/libs  broker jars (+ .spine-stamp)   .spine/kafka/data  KRaft log dir
#   .spine/postgres/data  cluster owned by user postgres   .spine/redis  redis working dir
#   .spine/run/*.pid   .spine/logs/{kafka,postgres,redis,maven}.log   .spine/infra.env
#
# Use the effective endpoints with:  set -a; . .spine/infra.env; set +a
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SPINE="$ROOT/.spine"
RUN="$SPINE/run"
LOGS="$SPINE/logs"
DEPLOY="$ROOT/deploy/local"
TIMEOUT="${SPINE_INFRA_TIMEOUT:-90}"

KAFKA_HOST=127.0.0.1
KAFKA_PORT="${SPINE_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${SPINE_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_DIR="$SPINE/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs"
KAFKA_DATA="$KAFKA_DIR/data"
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
kafka_probe() { # BOOTSTRAP TIMEOUT [--quiet]
  python3 "$ROOT/scripts/kafka_ready.py" --bootstrap "$1" --timeout "$2" ${3:-}
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
  tmp="$KAFKA_DIR/libs.tmp"
  rm -rf "$tmp"
  mkdir -p "$KAFKA_DIR"
  if ! mvn -B -q -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$LOGS/maven.log" 2>&1; then
    tail_log "$LOGS/maven.log" 40
    die "kafka: Maven could not fetch the broker jars (full output: $LOGS/maven.log)"
  fi
  [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka: kafka_2.13-$KAFKA_VERSION.jar missing after Maven run"
  echo "$want" >"$tmp/.spine-stamp"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
  say "kafka: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in .spine/kafka/libs ($(since "$t0"))"
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

kafka_render_config() {
  mkdir -p "$KAFKA_DATA"
  sed -e "s|@KAFKA_HOST@|$KAFKA_HOST|g" -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" -e "s|@KAFKA_DATA_DIR@|$KAFKA_DATA|g" \
    "$DEPLOY/kafka/server.properties.tmpl" >"$KAFKA_PROPS.tmp"
  mv "$KAFKA_PROPS.tmp" "$KAFKA_PROPS"
}

kafka_format_once() {
  local id
  [ -f "$KAFKA_DATA/meta.properties" ] && return 0
  if [ -s "$KAFKA_DIR/cluster.id" ]; then
    id="$(cat "$KAFKA_DIR/cluster.id")"
  else
    id="$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka.log" | tail -n 1)"
    [ -n "$id" ] || die "kafka: could not generate a cluster id"
    echo "$id" >"$KAFKA_DIR/cluster.id"
  fi
  say "kafka: formatting storage (cluster id $id)"
  kafka_java kafka.tools.StorageTool format -t "$id" -c "$KAFKA_PROPS" --standalone \
    >>"$LOGS/kafka.log" 2>&1 || {
    tail_log "$LOGS/kafka.log" 20
    die "kafka: storage format failed"
  }
}

KAFKA_MODE="" # external | running | reused | started
KAFKA_T0=""
KAFKA_BOOTSTRAP=""

kafka_start() {
  KAFKA_T0="$(now)"
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    KAFKA_MODE=external
    KAFKA_BOOTSTRAP="$KAFKA_BOOTSTRAP_SERVERS"
    say "kafka: KAFKA_BOOTSTRAP_SERVERS is set, waiting for $KAFKA_BOOTSTRAP"
    return 0
  fi
  KAFKA_BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"
  if pid_of "$RUN/kafka.pid" kafka.Kafka >/dev/null; then
    KAFKA_MODE=running
    return 0
  fi
  rm -f "$RUN/kafka.pid"
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
  kafka_install_jars
  kafka_render_config
  kafka_format_once
  say "kafka: starting Kafka $KAFKA_VERSION (KRaft, single node) on $KAFKA_BOOTSTRAP"
  printf '\n===== %s infra.sh: starting kafka %s =====\n' "$(date -Is)" "$KAFKA_VERSION" >>"$LOGS/kafka.log"
  # setsid: own session, so a Ctrl-C in the calling shell does not kill the broker.
  # The inner bash writes its own pid, then execs java (same pid).
  # 9>&-: do not hand the infra.sh lock to the daemon.
  kafka_jvm_cmd
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/kafka.pid" \
    "${KAFKA_CMD[@]}" kafka.Kafka "$KAFKA_PROPS" </dev/null >>"$LOGS/kafka.log" 2>&1 9>&- &
  KAFKA_MODE=started
}

kafka_wait() {
  local deadline pid
  deadline=$(($(date +%s) + TIMEOUT))
  while :; do
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
  say "kafka: ready at $KAFKA_BOOTSTRAP in $(since "$KAFKA_T0") ($KAFKA_MODE${pid:+, pid $pid})"
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
  local pid
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    if kafka_probe "$KAFKA_BOOTSTRAP_SERVERS" 0 --quiet; then
      echo "kafka:    external  $KAFKA_BOOTSTRAP_SERVERS (KAFKA_BOOTSTRAP_SERVERS)"
      return 0
    fi
    echo "kafka:    stopped   $KAFKA_BOOTSTRAP_SERVERS (KAFKA_BOOTSTRAP_SERVERS) not answering"
    return 1
  fi
  if pid="$(pid_of "$RUN/kafka.pid" kafka.Kafka)"; then
    if kafka_probe "$KAFKA_HOST:$KAFKA_PORT" 0 --quiet; then
      echo "kafka:    running   $KAFKA_HOST:$KAFKA_PORT (pid $pid, Kafka $KAFKA_VERSION)"
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
  mv "$SPINE/infra.env.tmp" "$SPINE/infra.env"
}

cmd_up() {
  local t0
  t0="$(now)"
  ensure_dirs
  lock
  rm -f "$SPINE/infra.env" # rewritten only when everything is ready
  ensure_python3
  # Kafka first (slowest): its JVM boots while PostgreSQL and Redis start.
  kafka_start
  pg_up
  redis_up
  kafka_wait
  write_env
  say "infra up in $(since "$t0"); endpoints in .spine/infra.env:"
  sed 's/^/    /' "$SPINE/infra.env"
}

cmd_down() {
  ensure_dirs
  lock
  kafka_down
  redis_down
  pg_down
}

cmd_purge() {
  cmd_down
  say "purging Kafka, PostgreSQL and Redis data and logs under .spine/ (keeping .spine/kafka/libs)"
  rm -rf "$KAFKA_DATA" "$KAFKA_DIR/cluster.id" "$KAFKA_PROPS" "$KAFKA_DIR/libs.tmp" \
    "$PG_DIR" "$SPINE/redis" "$LOGS" "$SPINE/infra.env"
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

case "${1:-}" in
  up) cmd_up ;;
  down)
    if [ "${2:-}" = --purge ]; then cmd_purge; else cmd_down; fi
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
