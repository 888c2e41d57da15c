#!/usr/bin/env bash
# The ensemble's CPU cost against the plugin's single model in PyTorch f32, in one run on one
# machine (BENCHMARKS.md, "Ensembles against the plugin's model"):
#   cost.sh CSV OUT_DIR [BIN] [REFERENCE_PYTHON]
# CSV: a few labelled photos (`nyala_csv.py` output cut to its first rows); every feature and
# pair is computed (no --data-dir). Per round (ROUNDS, default 2): the ensemble in bf16 (on AMX
# tiles where the CPU has them), the same with WBIA_LIGHTGLUE_CPU=avx512 (AVX-512 BF16, no
# tiles), the ensemble in f32, aliked-n16 alone in f32, then the reference
# (scripts/reference/evaluate_reference.py, torch 2 threads), which reports the CPU seconds of
# its scoring; ours are the whole process's user + system seconds from /usr/bin/time.
set -euo pipefail
csv=$1 out=$2 bin=${3:-target/release/wbia-lightglue} ref_py=${4:-python3}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
mkdir -p "$out"
echo '{"model_name": ["aliked-n16", "aliked-n16rot"]}' > "$out/ensemble.json"
echo '{"model_name": "aliked-n16"}' > "$out/n16.json"
ours() { # LABEL CONFIG PRECISION [ENV...]
  local label=$1 config=$2 precision=$3
  shift 3
  /usr/bin/time -f "$label: user %U sys %S wall %e" -a -o "$out/cost.log" \
    env RAYON_NUM_THREADS=2 "$@" "$bin" evaluate --csv "$csv" --group-column side \
    --weights "$repo/weights" --config "$out/$config" --precision "$precision" --json \
    > "$out/$label.json"
}
for round in $(seq 1 "${ROUNDS:-2}"); do
  ours "ensemble-bf16-$round" ensemble.json bf16
  ours "ensemble-bf16-avx512-$round" ensemble.json bf16 WBIA_LIGHTGLUE_CPU=avx512
  ours "ensemble-f32-$round" ensemble.json f32
  ours "n16-f32-$round" n16.json f32
  "$ref_py" "$repo/scripts/reference/evaluate_reference.py" "$csv" --group-column side \
    --out "$out/reference-$round.json" 2>&1 | tail -1 | sed "s/^/reference-$round: /" >> "$out/cost.log"
done
cat "$out/cost.log"
