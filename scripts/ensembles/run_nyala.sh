#!/usr/bin/env bash
# Runs `wbia-lightglue evaluate` on Nyala subsets for single models and ensembles (see
# scripts/ensembles/README.md). Usage:
#   run_nyala.sh NYALA_ROOT OUT_DIR [BIN]
# NYALA_ROOT holds Nyala_Data_Zero/ (a local copy; nothing is fetched). Writes CSVs and
# configurations into OUT_DIR, one JSON result per run, and keeps features and pair scores in
# OUT_DIR/store so that an ensemble reuses its members' scores (and a rerun scores nothing).
# Sizes: TRAIN_PHOTOS and TEST_PHOTOS per flank (default 24 each); TEST_EXCLUDE: a test CSV
# of an earlier run whose individuals the test subset leaves out (a fresh test). SPLITS:
# which splits to run (default "train test"; "test" alone once the choice on train is fixed,
# and after a train run has fitted the member calibrations `log_odds` reads: FITTED).
set -euo pipefail
root=$1 out=$2 bin=${3:-target/release/wbia-lightglue}
here=$(cd "$(dirname "$0")" && pwd)
weights=$(cd "$here/../.." && pwd)/weights
mkdir -p "$out"
python3 "$here/nyala_csv.py" "$root" --split train --photos "${TRAIN_PHOTOS:-24}" --out "$out/train.csv"
python3 "$here/nyala_csv.py" "$root" --split test --photos "${TEST_PHOTOS:-24}" --out "$out/test.csv" \
  ${TEST_EXCLUDE:+--exclude "$TEST_EXCLUDE"}
run() { # NAME SPLIT PRECISION CONFIG_JSON [EVALUATE_ARGS...]
  local name=$1 split=$2 precision=$3 config=$4
  shift 4
  echo "$config" > "$out/$name.config.json"
  if [ -s "$out/$name.json" ]; then echo "$name: done before"; return; fi
  echo "$name: $(date -u +%H:%M:%S) start"
  RAYON_NUM_THREADS=${THREADS:-2} "$bin" evaluate --csv "$out/$split.csv" --group-column side \
    --data-dir "$out/store" --precision "$precision" --weights "$weights" \
    --config "$out/$name.config.json" --json "$@" > "$out/$name.json.part"
  mv "$out/$name.json.part" "$out/$name.json"
  echo "$name: $(date -u +%H:%M:%S) done"
}
n16='{"model_name": "aliked-n16"}'
rot='{"model_name": "aliked-n16rot"}'
ens() { echo "{\"model_name\": [\"aliked-n16\", \"aliked-n16rot\"], \"fusion\": \"$1\"}"; }
splits=" ${SPLITS:-train test} "
# `log_odds` weighs the members by calibrations fitted on the train split: a train run fits
# them into `fit_into`; the test split reads FITTED (e.g. the configuration committed beside
# this script), else that file. Checked before any test run, not after hours of them.
fit_into=$out/train-ens-log_odds-bf16.fitted.config.json
fitted=${FITTED:-$fit_into}
# Train: the members in bf16, then every fusion rule from their stored scores.
if [[ $splits == *" train "* ]]; then
  run train-n16-bf16 train bf16 "$n16"
  run train-n16rot-bf16 train bf16 "$rot"
  for f in sum log_sum max; do run "train-ens-$f-bf16" train bf16 "$(ens $f)"; done
  run train-ens-log_odds-bf16 train bf16 "$(ens log_odds)" --calibrate "$fit_into"
fi
# Test: the members in bf16, the ensembles, then the plugin's model in f32 (its precision).
if [[ $splits == *" test "* ]]; then
  [ -s "$fitted" ] || { echo "$fitted is missing: run the train split first" >&2; exit 1; }
  run test-n16-bf16 test bf16 "$n16"
  run test-n16rot-bf16 test bf16 "$rot"
  for f in sum log_sum max; do run "test-ens-$f-bf16" test bf16 "$(ens $f)"; done
  run test-ens-log_odds-bf16 test bf16 "$(cat "$fitted")"
  run test-n16-f32 test f32 "$n16"
fi
