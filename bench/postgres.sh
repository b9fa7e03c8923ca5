#!/usr/bin/env bash
# A private PostgreSQL server on 127.0.0.1 for the TPC-C comparison (`bench tpcc --backend
# postgres`). Installs PostgreSQL from Debian's packages if it is missing.
#
#   bench/postgres.sh start    install if needed, create the cluster if needed, start it, and
#                              print the URL to pass as --pg-url
#   bench/postgres.sh stop     stop it
#   bench/postgres.sh url      print the URL
#   bench/postgres.sh running  exit status 0 if it is running
#
# SEALDB_PG_DIR (default /var/tmp/sealdb-postgres) holds the cluster; SEALDB_PG_PORT (default
# 5433, beside a system cluster's 5432) is its port. Only 127.0.0.1 is listened on, and local
# connections are trusted: this server is for benchmarks, not for data.
#
# Settings (written once, at cluster creation) keep every commit durable, as sealdb's are:
# fsync and synchronous_commit stay on. shared_buffers holds the whole 4-warehouse database,
# and checkpoints are spaced so that a 60 s run does not start one by itself. Given at every
# start, so that a cluster made before holds it too: room for 1,024 predicate locks a
# transaction (PostgreSQL's default of 64 ran out, `out of shared memory`, after about 100 s of
# the standard mix at SERIALIZABLE; a server already running keeps what it started with).
set -euo pipefail

dir=${SEALDB_PG_DIR:-/var/tmp/sealdb-postgres}
port=${SEALDB_PG_PORT:-5433}
url="postgresql://postgres@127.0.0.1:$port/tpcc"

say() { printf '==> %s\n' "$*" >&2; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

bindir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

install() {
  if [ -z "$(bindir)" ] || [ ! -x "$(bindir)/initdb" ]; then
    say "installing PostgreSQL from Debian's packages"
    as_root apt-get update -qq
    # Debian's package starts a system cluster on 5432 where it can; ours is separate.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
}

# PostgreSQL refuses to run as root: as root, run its programs as the `postgres` user that
# Debian's package creates.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  install
  local bin
  bin=$(bindir)
  if [ ! -f "$dir/PG_VERSION" ]; then
    say "creating a cluster in $dir"
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$dir"; fi
    chmod 700 "$dir"
    # C collation: names sort by bytes, as sealdb's keys do.
    as_pg "$bin/initdb" -D "$dir" --username=postgres --auth=trust --encoding=UTF8 \
      --locale=C >/dev/null
    cat <<EOF | as_pg tee -a "$dir/postgresql.conf" >/dev/null
# sealdb benchmark settings
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 2GB
max_wal_size = 16GB
checkpoint_timeout = 30min
fsync = on
synchronous_commit = on
EOF
  fi
  if as_pg "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    say "PostgreSQL is already running in $dir"
  else
    # A server killed without cleaning up leaves its pid file; if that process is gone (or a
    # zombie nobody reaped), the file is stale and would stop pg_ctl from starting a new one.
    if [ -f "$dir/postmaster.pid" ]; then
      local pid state
      pid=$(head -n 1 "$dir/postmaster.pid")
      state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
      if [ -z "$state" ] || [[ $state == Z* ]]; then
        say "removing the stale pid file of a server that is gone (pid $pid)"
        rm -f "$dir/postmaster.pid"
      fi
    fi
    say "starting PostgreSQL on 127.0.0.1:$port (log: $dir/server.log)"
    as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-c max_pred_locks_per_transaction=1024" start >/dev/null
  fi
  if ! as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAq \
    -c "SELECT 1 FROM pg_database WHERE datname = 'tpcc'" | grep -q 1; then
    as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -q -c "CREATE DATABASE tpcc"
  fi
  echo "$url"
}

stop() {
  local bin
  bin=$(bindir)
  if [ -n "$bin" ] && [ -f "$dir/PG_VERSION" ]; then
    as_pg "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "$url" ;;
  running)
    bin=$(bindir)
    [ -n "$bin" ] && as_pg "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
