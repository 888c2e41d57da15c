#!/usr/bin/env bash
# RustSec advisories against a snapshot of the advisory database, for machines that cannot
# reach GitHub, where cargo-deny fetches it (CI passes the snapshot it has). cargo-deny opens
# its database with git, so the snapshot is copied into a scratch repository and committed;
# `--disable-fetch` keeps it from trying the network. Fails on any advisory that `deny.toml`
# does not ignore, and says how old the snapshot is.
#   scripts/advisories.sh ADVISORY_DB_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot=${1:?usage: scripts/advisories.sh ADVISORY_DB_DIR (a copy of RustSec advisory-db)}
[ -d "$snapshot/crates" ] || { echo "$snapshot holds no advisory database (no crates/)" >&2; exit 2; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# cargo-deny (0.20) keeps each database under db-path in a folder named after a hash of its
# URL; this is the default RustSec URL's.
db="$scratch/db/advisory-db-3157b0e258782691"
mkdir -p "$db"
cp -R "$snapshot"/. "$db"/
newest=$(find "$db/crates" -name '*.md' -print0 | xargs -0 grep -h '^date = ' | sort | tail -1)
echo "advisory database snapshot: newest advisory ${newest#date = }"
git -C "$db" init -q
git -C "$db" add -A
git -C "$db" -c user.name=ci -c user.email=ci@localhost commit -q -m snapshot
# `--offline` keeps cargo-deny off the network for the database, and for crates too: every
# platform's crates are fetched first (cargo metadata reads them all).
cargo fetch --locked
# deny.toml with the scratch folder as its database path.
sed "s|^\[advisories\]|[advisories]\ndb-path = \"$scratch/db\"|" deny.toml > "$scratch/deny.toml"
cargo deny --offline --locked --config "$scratch/deny.toml" check advisories
