#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback, for tests and benchmarks (not for production:
# trust authentication, fsync off).
#
#   source scripts/postgres.sh PORT     # starts it; sets PG_URL, stops it when the shell exits
#
# Needs PostgreSQL's server programs (Debian's `postgresql` package: initdb, pg_ctl). As root
# the server runs as the `postgres` user (initdb refuses root).
pg_port="${1:-54329}"
pg_bin=$(dirname "$(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl | tail -1)")
pg_dir=$(mktemp -d)
pg_as=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$pg_dir"
  pg_as=(runuser -u postgres --)
fi
"${pg_as[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust --no-sync > "$pg_dir/initdb.log"
"${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
  -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
  start > /dev/null
pg_stop() {
  "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop > /dev/null 2>&1 || true
  rm -rf "$pg_dir"
}
trap pg_stop EXIT
PG_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
export PG_URL
