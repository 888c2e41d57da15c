#!/usr/bin/env bash
# The test command (README, CI): starts a throwaway PostgreSQL server on loopback for the
# PostgreSQL store's tests, runs `cargo test --workspace` with its URL in
# WBIA_LIGHTGLUE_TEST_DATABASE_URL, and stops it. Extra arguments go to `cargo test`.
# Needs PostgreSQL's server programs (initdb, pg_ctl, postgres; Debian's `postgresql`
# package). As root, the server runs as the `postgres` user (initdb refuses root).
# With WBIA_LIGHTGLUE_TEST_DATABASE_URL already set, that server is used instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${WBIA_LIGHTGLUE_TEST_DATABASE_URL:-}" ]; then
  exec cargo test --workspace "$@"
fi
bin=$(dirname "$(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl | tail -1)")
port=${WBIA_LIGHTGLUE_TEST_PG_PORT:-54329}
dir=$(mktemp -d)
as_server=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$dir"
  as_server=(runuser -u postgres --)
fi
"${as_server[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync > "$dir/initdb.log"
"${as_server[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start > /dev/null
trap '"${as_server[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop > /dev/null; rm -rf "$dir"' EXIT
export WBIA_LIGHTGLUE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
cargo test --workspace "$@"
