#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the test suite. `start` installs Debian's
# postgresql when it is missing, makes a fresh cluster in a temporary folder (trust auth, bound
# to 127.0.0.1 only, never the system's cluster) and prints the line that points the tests at it:
#
#   eval "$(scripts/postgres.sh start)"    # exports MEMSDK_TEST_POSTGRES_URL
#   scripts/postgres.sh stop
set -euo pipefail

PORT=${MEMSDK_PG_PORT:-54329}
DIR=${MEMSDK_PG_DIR:-/tmp/memsdk-postgres}

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_owner() {
  # PostgreSQL refuses to run as root: run it as the package's postgres user then.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-start}" in
  start)
    if [ -z "$(bindir)" ]; then
      echo "installing Debian's postgresql" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    fi
    bin=$(bindir)
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
      useradd --system --no-create-home postgres
    fi
    if [ -f "$DIR/data/postmaster.pid" ]; then
      as_owner "$bin/pg_ctl" -D "$DIR/data" -m immediate stop >&2 || true
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"
    if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; fi
    as_owner "$bin/initdb" -D "$DIR/data" -A trust -U postgres --no-sync >/dev/null
    as_owner "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off" start >&2
    echo "export MEMSDK_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
    ;;
  stop)
    bin=$(bindir)
    if [ -n "$bin" ] && [ -f "$DIR/data/postmaster.pid" ]; then
      as_owner "$bin/pg_ctl" -D "$DIR/data" -m fast -w stop >&2
    fi
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
