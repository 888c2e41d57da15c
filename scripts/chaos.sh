#!/usr/bin/env bash
# Long chaos schedules of tests/chaos.rs: several seeds, more faults, and the coordinating
# replica among the victims (its job then ends `exception` after its lease and is started
# again). CI runs one short schedule; record runs of this one in RELIABILITY.md.
#   scripts/chaos.sh [SEEDS] [FAULTS]        # default: seeds 1,2,3,4,5; 10 faults each
# Needs PostgreSQL's server programs (initdb, pg_ctl), as scripts/test.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAOS_SEEDS="${1:-1,2,3,4,5}" CHAOS_FAULTS="${2:-10}" CHAOS_KILL_COORDINATOR=1
cargo test --workspace --locked --test chaos -- --nocapture
