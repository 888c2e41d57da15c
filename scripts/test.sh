#!/usr/bin/env bash
# The test command (README, CI): starts a throwaway PostgreSQL server on loopback
# (scripts/postgres.sh) for the PostgreSQL store's and the replicas' tests, runs
# `cargo test --workspace` with its URL in WBIA_LIGHTGLUE_TEST_DATABASE_URL, and stops it.
# Extra arguments go to `cargo test`. With WBIA_LIGHTGLUE_TEST_DATABASE_URL already set,
# that server is used instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${WBIA_LIGHTGLUE_TEST_DATABASE_URL:-}" ]; then
  # shellcheck source=scripts/postgres.sh
  source scripts/postgres.sh "${WBIA_LIGHTGLUE_TEST_PG_PORT:-54329}"
  export WBIA_LIGHTGLUE_TEST_DATABASE_URL="$PG_URL"
fi
cargo test --workspace "$@"
