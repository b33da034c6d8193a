#!/usr/bin/env bash
# Provide the local PostgreSQL the outbox tests and demos use, as scripts/broker.sh
# provides RabbitMQ: install Debian's package if it is missing, start a server of the
# project's own on loopback (its own data directory, its own port) unless it already
# answers, wait until it is ready, and print its URL on stdout.
#
#   scripts/postgres.sh          ensure the server runs (idempotent); prints its URL
#   scripts/postgres.sh stop     stop it
#
# The server: 127.0.0.1:${POSTAGE_POSTGRES_PORT:-5433}, data in
# ${POSTAGE_POSTGRES_DATA:-/var/tmp/postage-postgres}, user and database `postage`
# (password `postage`), so the URL is
#   postgres://postage:postage@127.0.0.1:5433/postage
# which the tests read from POSTAGE_POSTGRES_URL. PostgreSQL refuses to run as root: as
# root (as CI runs) the server runs as the `postgres` user the package creates.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${POSTAGE_POSTGRES_PORT:-5433}
data=${POSTAGE_POSTGRES_DATA:-/var/tmp/postage-postgres}
url="postgres://postage:postage@127.0.0.1:$port/postage"

find_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

if ! bin=$(find_bin); then
  echo "postgres: installing Debian's postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  # The package starts a cluster of its own on 5432; the project's is apart from it.
  bin=$(find_bin)
fi

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

if [ "${1:-}" = stop ]; then
  if [ -f "$data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >&2
  fi
  exit 0
fi

answers() { "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; }

if answers; then
  echo "postgres: already answers on 127.0.0.1:$port" >&2
  echo "$url"
  exit 0
fi

if [ ! -f "$data/PG_VERSION" ]; then
  echo "postgres: a new cluster in $data" >&2
  mkdir -p "$data"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$data"
  chmod 700 "$data"
  pwfile=$(mktemp)
  echo postage >"$pwfile"
  [ "$(id -u)" = 0 ] && chown postgres "$pwfile"
  as_owner "$bin/initdb" -D "$data" -U postage --pwfile="$pwfile" -A scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >&2
  rm -f "$pwfile"
fi

echo "postgres: starting on 127.0.0.1:$port" >&2
# Tuned for tests, not for keeping data through a power cut: the tests' databases are
# thrown away, and fsync's cost would be the disk's, not postage's.
as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k /tmp -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  start >&2
for _ in $(seq 60); do
  answers && break
  sleep 0.5
done
if ! answers; then
  tail -20 "$data/server.log" >&2
  echo "postgres: did not answer on 127.0.0.1:$port" >&2
  exit 1
fi
if ! PGPASSWORD=postage "$bin/psql" -h 127.0.0.1 -p "$port" -U postage -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = 'postage'" | grep -q 1; then
  PGPASSWORD=postage "$bin/createdb" -h 127.0.0.1 -p "$port" -U postage postage >&2
fi
echo "postgres: ready" >&2
echo "$url"
