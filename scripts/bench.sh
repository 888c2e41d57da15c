#!/usr/bin/env bash
# Times this binary and the PyTorch reference in one run, on the same machine, with the same
# inputs and thread count, and prints the rows of BENCHMARKS.md.
#
#   REFERENCE_PYTHON=path/to/venv/bin/python scripts/bench.sh
#
# Each round times the reference (f32, then its CPU bf16 autocast), our f32 and our bf16, each
# measurement the median of REPEAT runs after a warm-up; the table gives the median over the
# rounds and, per row, the smallest and the median of the rounds' ratios (one noisy round
# decides nothing).
#
# Environment: REFERENCE_PYTHON (a Python with scripts/reference/requirements.txt installed;
# default python3), THREADS (default 2), REPEAT (default 5), ROUNDS (default 2), SKIP_1VN=1
# to skip 1-vs-N, N (database size of 1-vs-N, default 64), SKIP_BF16=1 to skip the bf16 rows, BF16_AVX512=1 to time bf16 also without AMX tiles (`WBIA_LIGHTGLUE_CPU=avx512`). Run it on an otherwise idle machine.
# Results: target/bench/round-N/{reference,ours,ours-bf16}.json.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${REFERENCE_PYTHON:-python3}"
threads="${THREADS:-2}"
repeat="${REPEAT:-5}"
rounds="${ROUNDS:-2}"
extra=()
[ "${SKIP_1VN:-0}" = 1 ] && extra+=(--skip-1vn)
[ -n "${N:-}" ] && extra+=(--n "$N")
bf16=1
[ "${SKIP_BF16:-0}" = 1 ] && bf16=0

cargo build --release --locked
rm -rf target/bench
dirs=()
for round in $(seq 1 "$rounds"); do
  dir="target/bench/round-$round"
  mkdir -p "$dir"
  dirs+=("$dir")
  echo "round $round: reference (torch, $threads threads)..." >&2
  ref_extra=("${extra[@]}")
  [ "$bf16" = 1 ] && ref_extra+=(--bf16-autocast)
  "$py" scripts/reference/bench_reference.py --threads "$threads" --repeat "$repeat" \
    "${ref_extra[@]}" > "$dir/reference.json"
  echo "round $round: wbia-lightglue f32 ($threads threads)..." >&2
  RAYON_NUM_THREADS="$threads" target/release/wbia-lightglue bench --repeat "$repeat" \
    --device cpu "${extra[@]}" > "$dir/ours.json"
  if [ "$bf16" = 1 ]; then
    echo "round $round: wbia-lightglue bf16 ($threads threads)..." >&2
    RAYON_NUM_THREADS="$threads" target/release/wbia-lightglue bench --repeat "$repeat" \
      --device cpu --precision bf16 --skip-1vn > "$dir/ours-bf16.json"
    if [ "${BF16_AVX512:-0}" = 1 ]; then
      echo "round $round: wbia-lightglue bf16 without AMX tiles ($threads threads)..." >&2
      WBIA_LIGHTGLUE_CPU=avx512 RAYON_NUM_THREADS="$threads" target/release/wbia-lightglue bench \
        --repeat "$repeat" --device cpu --precision bf16 --skip-1vn > "$dir/ours-bf16-avx512.json"
    fi
  fi
done
python3 scripts/bench_table.py "${dirs[@]}"
