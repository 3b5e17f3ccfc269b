#!/usr/bin/env bash
# The compose stack's secured broker (deploy/compose.yaml; DESIGN §12, docs/security.md):
# SCRAM-SHA-512 users made when the storage is formatted, their passwords made once at random
# and never written in the compose file nor put on a command line (the host's `ps` shows the
# containers' command lines too). Runs in the apache/kafka image, in two services:
#
#   kafka-sasl.sh credentials  one-shot `kafka-credentials`, as root, without a network:
#       the passwords of admin, broker and controller, made once into the kafka-secrets
#       volume and kept; the admin's copy for the init job; every principal's credentials
#       volume handed to the service user (uid 10001, 0700), where the init job writes it
#   kafka-sasl.sh broker       the `kafka` service, as the image's appuser: render, then
#       format a fresh data volume with --add-scram for admin and broker, then the broker
#   kafka-sasl.sh render       only the render: server.properties from the KAFKA_*
#       environment (the image's own convention: KAFKA_A_B -> a.b, ___ -> -, __ -> _) plus
#       every listener's login, and the healthcheck's client.properties, both 0600
#
# Every credentials file is {"username": ..., "password": ...} (KAFKA_CREDENTIALS_FILE's
# format); passwords are 43 characters of [A-Za-z0-9], so nothing needs quoting anywhere.
set -eu
export LC_ALL=C

SECRETS_ROOT="${SPINE_SECRETS_ROOT:-/secrets}"       # credentials: where the volumes are
SPINE_OWNER="${SPINE_OWNER:-10001:10001}"             # the ai-spine image's service user
BROKER_OWNER="${SPINE_BROKER_OWNER:-appuser:appuser}" # the apache/kafka image's user
SECRETS="${SPINE_KAFKA_SECRETS:-/etc/kafka/spine}"    # broker: kafka-secrets, read-only
CONFIG_DIR="${SPINE_KAFKA_CONFIG_DIR:-/opt/kafka/config}"
BIN="${SPINE_KAFKA_BIN:-/opt/kafka/bin}"
SCRAM=org.apache.kafka.common.security.scram.ScramLoginModule
PLAIN=org.apache.kafka.common.security.plain.PlainLoginModule

say() { printf '==> kafka-sasl: %s\n' "$*" >&2; }
die() {
  say "ERROR: $*"
  exit 1
}

# --- credentials files ------------------------------------------------------------------------
new_password() {
  local password
  password="$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 43)" || true
  [ "${#password}" -eq 43 ] || die "could not make a password"
  printf '%s' "$password"
}

password_of() { # FILE USER: the password of a credentials file this script wrote
  local password
  password="$(sed -n "s/^{\"username\": \"$2\", \"password\": \"\([A-Za-z0-9]*\)\"}\$/\1/p" "$1")"
  [ "${#password}" -ge 16 ] || die "$1 is not $2's credentials file (delete it for a new one)"
  printf '%s' "$password"
}

private_dir() { # DIR OWNER
  mkdir -p "$1"
  chown "$2" "$1"
  chmod 0700 "$1"
}

write_credentials() { # FILE OWNER USER PASSWORD: 0600 from the first byte, atomically
  (umask 077 && printf '{"username": "%s", "password": "%s"}\n' "$3" "$4" >"$1.tmp")
  chown "$2" "$1.tmp"
  mv -f "$1.tmp" "$1"
}

cmd_credentials() {
  local user file password dir
  private_dir "$SECRETS_ROOT/kafka" "$BROKER_OWNER"
  for user in admin broker controller; do
    file="$SECRETS_ROOT/kafka/$user.json"
    if [ ! -s "$file" ]; then # made once: the data volume was formatted with it
      password="$(new_password)"
      write_credentials "$file" "$BROKER_OWNER" "$user" "$password"
      say "made the password of the broker's user $user (kafka-secrets volume)"
    fi
    password_of "$file" "$user" >/dev/null
    chown "$BROKER_OWNER" "$file"
    chmod 0600 "$file"
  done
  # the operator's login, for the init job (spine-admin): the same admin password
  password="$(password_of "$SECRETS_ROOT/kafka/admin.json" admin)"
  private_dir "$SECRETS_ROOT/admin" "$SPINE_OWNER"
  write_credentials "$SECRETS_ROOT/admin/admin.json" "$SPINE_OWNER" admin "$password"
  for dir in "$SECRETS_ROOT"/principals/*/; do
    if [ -d "$dir" ]; then private_dir "${dir%/}" "$SPINE_OWNER"; fi
  done
  say "credentials ready"
}

# --- the broker -------------------------------------------------------------------------------
is_property() { # NAME: a KAFKA_* variable the image's scripts do not read themselves
  case "$1" in
    KAFKA_VERSION | KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JMX_OPTS | KAFKA_JMX_HOSTNAME) return 1 ;;
    KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_GC_LOG_OPTS | KAFKA_LOG4J_OPTS) return 1 ;;
    KAFKA_LOG4J_ROOT_LOGLEVEL | KAFKA_LOG4J_LOGGERS | KAFKA_TOOLS_LOG4J_LOGLEVEL) return 1 ;;
    KAFKA_*) return 0 ;;
  esac
  return 1
}

env_properties() { # KAFKA_A_B=v -> a.b=v, as the image's own start script reads them
  local name key
  for name in $(compgen -e | sort); do
    is_property "$name" || continue
    key="${name#KAFKA_}"
    key="${key,,}"
    key="${key//_/.}"
    key="${key//.../-}"
    key="${key//../_}"
    printf '%s=%s\n' "$key" "${!name}"
  done
}

listener_logins() { # BROKER_PASSWORD CONTROLLER_PASSWORD: one JAAS login per listener
  local entry name protocol prefix
  local map="${KAFKA_LISTENER_SECURITY_PROTOCOL_MAP:?}"
  local inter="${KAFKA_INTER_BROKER_LISTENER_NAME:?}"
  local controller="${KAFKA_CONTROLLER_LISTENER_NAMES:?}"
  echo "# every listener's login (kafka-sasl.sh, from the kafka-secrets volume)"
  for entry in ${map//,/ }; do
    name="${entry%%:*}" protocol="${entry#*:}"
    case "$protocol" in
      SASL_*) ;;
      *) die "listener $name is $protocol: every listener must ask for a login" ;;
    esac
    prefix="listener.name.${name,,}"
    if [ "$name" = "$controller" ]; then # KRaft: SCRAM does not work between controllers
      printf '%s.plain.sasl.jaas.config=%s required username="controller" password="%s"' \
        "$prefix" "$PLAIN" "$2"
      printf ' user_controller="%s";\n' "$2"
    elif [ "$name" = "$inter" ]; then # the broker logs in to itself as the SCRAM user broker
      printf '%s.scram-sha-512.sasl.jaas.config=%s required username="broker" password="%s";\n' \
        "$prefix" "$SCRAM" "$1"
    else # the SCRAM users' credentials are in the metadata, not here
      printf '%s.scram-sha-512.sasl.jaas.config=%s required;\n' "$prefix" "$SCRAM"
    fi
  done
}

render() { # BROKER_PASSWORD CONTROLLER_PASSWORD
  (
    umask 077
    { env_properties && listener_logins "$1" "$2"; } >"$CONFIG_DIR/server.properties.tmp"
    # the healthcheck's login (kafka-topics.sh --command-config)
    printf 'security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n' \
      >"$CONFIG_DIR/client.properties.tmp"
    printf 'sasl.jaas.config=%s required username="broker" password="%s";\n' "$SCRAM" "$1" \
      >>"$CONFIG_DIR/client.properties.tmp"
  )
  mv -f "$CONFIG_DIR/server.properties.tmp" "$CONFIG_DIR/server.properties"
  mv -f "$CONFIG_DIR/client.properties.tmp" "$CONFIG_DIR/client.properties"
}

format_once() { # ADMIN_PASSWORD BROKER_PASSWORD
  local data="${KAFKA_LOG_DIRS:?}" stamp main args="$CONFIG_DIR/.storage-format.args"
  data="${data%%,*}"
  # which passwords the storage was formatted with (a digest): a kafka-secrets volume made
  # again would lock the broker out of its own data, so that is said, not retried forever
  stamp="$(printf 'admin:%s\nbroker:%s\n' "$1" "$2" | sha256sum | cut -d' ' -f1)"
  if [ -f "$data/meta.properties" ]; then
    [ -f "$data/.spine-scram" ] || die "$data was formatted without SCRAM users (an unsecured" \
      "stack): nobody can log in. 'docker compose -f deploy/compose.yaml down -v' deletes it" \
      "with every topic"
    [ "$(cat "$data/.spine-scram")" = "$stamp" ] || die "$data was formatted with other" \
      "passwords than the kafka-secrets volume holds: restore that volume, or delete both" \
      "(down -v)"
    return 0
  fi
  main="$(sed -n 's/.*kafka-run-class.sh \([A-Za-z0-9_.]*\) .*/\1/p' "$BIN/kafka-storage.sh")"
  (
    umask 077
    printf '%s\n' "${main:-kafka.tools.StorageTool}" format --cluster-id "${CLUSTER_ID:?}" \
      --config "$CONFIG_DIR/server.properties" >"$args"
    printf -- '--add-scram\nSCRAM-SHA-512=[name=%s,password=%s]\n' admin "$1" broker "$2" >>"$args"
  )
  say "formatting $data (cluster $CLUSTER_ID) with the SCRAM-SHA-512 users admin and broker"
  # java @file: the passwords never reach a command line; the output stays private (a
  # refused --add-scram may echo its argument)
  if ! (umask 077 && "$BIN/kafka-run-class.sh" "@$args" >"$CONFIG_DIR/format.log" 2>&1); then
    rm -f "$args"
    die "the storage format failed: $CONFIG_DIR/format.log (0600) says why"
  fi
  rm -f "$args"
  printf '%s\n' "$stamp" >"$data/.spine-scram"
}

broker_passwords() { # sets BROKER_PW, CONTROLLER_PW, ADMIN_PW
  BROKER_PW="$(password_of "$SECRETS/broker.json" broker)"
  CONTROLLER_PW="$(password_of "$SECRETS/controller.json" controller)"
  ADMIN_PW="$(password_of "$SECRETS/admin.json" admin)"
}

cmd_render() {
  broker_passwords
  render "$BROKER_PW" "$CONTROLLER_PW"
}

cmd_broker() {
  broker_passwords
  render "$BROKER_PW" "$CONTROLLER_PW"
  format_once "$ADMIN_PW" "$BROKER_PW"
  unset BROKER_PW CONTROLLER_PW ADMIN_PW
  exec "$BIN/kafka-server-start.sh" "$CONFIG_DIR/server.properties"
}

case "${1:-}" in
  credentials) cmd_credentials ;;
  render) cmd_render ;;
  broker) cmd_broker ;;
  *) die "usage: kafka-sasl.sh credentials|render|broker" ;;
esac
