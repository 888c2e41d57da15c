#!/usr/bin/env bash
# Times this binary and the PyTorch reference in one run, on the same machine, with the same
# inputs and thread count, and prints the rows of BENCHMARKS.md.
#
#   REFERENCE_PYTHON=path/to/venv/bin/python scripts/bench.sh
#
# Environment: REFERENCE_PYTHON (a Python with scripts/reference/requirements.txt installed;
# default python3), THREADS (default 2), REPEAT (default 5), SKIP_1VN=1 to skip 1-vs-64.
# Run it on an otherwise idle machine. Results: target/bench/{reference,ours}.json.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${REFERENCE_PYTHON:-python3}"
threads="${THREADS:-2}"
repeat="${REPEAT:-5}"
extra=()
[ "${SKIP_1VN:-0}" = 1 ] && extra+=(--skip-1vn)

cargo build --release --locked
mkdir -p target/bench
echo "reference (torch, $threads threads)..." >&2
"$py" scripts/reference/bench_reference.py --threads "$threads" --repeat "$repeat" "${extra[@]}" \
  > target/bench/reference.json
echo "wbia-lightglue ($threads threads)..." >&2
RAYON_NUM_THREADS="$threads" target/release/wbia-lightglue bench --repeat "$repeat" "${extra[@]}" \
  > target/bench/ours.json
python3 scripts/bench_table.py target/bench/reference.json target/bench/ours.json
