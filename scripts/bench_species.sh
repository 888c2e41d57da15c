#!/usr/bin/env bash
# Species-scale timing of the service at its real defaults (512 px, 2048 keypoints, adaptive):
# a 1-vs-N chip/best query, cold (fresh store: every chip downloaded and extracted) then warm
# (same query again), wall time and the service's peak RSS, with the metrics that explain them.
#
#   scripts/bench_species.sh N [PYTHON] [CONFIG]
#
# PYTHON: one with numpy + opencv (for the fake WBIA). CONFIG: the service's config.json
# (default: none, the plugin's defaults), e.g. '{"rotation_sweep": true}'.
#
# Uses target/release/wbia-lightglue (cargo build --release first). Prints one JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:?number of database annotations}"
py="${2:-python3}"
config="${3:-}"
work=$(mktemp -d)
mkdir -p "$work/config"
if [ -n "$config" ]; then printf '%s\n' "$config" > "$work/config/config.json"; fi
wbia_port=5511
port=5512
"$py" scripts/fake_wbia.py --port "$wbia_port" --species "$((n + 1))" > "$work/wbia.log" 2>&1 &
wbia_pid=$!
./target/release/wbia-lightglue serve --wbia-url "http://127.0.0.1:$wbia_port" --port "$port" \
  --host 127.0.0.1 --config-dir "$work/config" --data-dir "$work/data" > "$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid $wbia_pid 2>/dev/null; rm -rf "$work"' EXIT
until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do sleep 0.5; done
until curl -sf "http://127.0.0.1:$wbia_port/api/test/heartbeat/" > /dev/null; do sleep 0.5; done
uuid() { printf '00000000-0000-0000-0001-%012x' "$1"; }
query="[\"$(uuid 1001)\"]"
database=$(for i in $(seq 1002 $((1001 + n))); do printf '"%s",' "$(uuid "$i")"; done)
database="[${database%,}]"
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
run() {
  local start end
  start=$(date +%s.%N)
  curl -sf -X POST "http://127.0.0.1:$port/api/review/query/chip/best/" \
    --data-urlencode "query_annot_uuid_list=$query" \
    --data-urlencode "database_annot_uuid_list=$database" \
    --data-urlencode "pipeline_root=LightGlue" > "$work/answer.json"
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}
rss() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status"; }
cold=$(run)
cold_rss=$(rss)
cold_chips=$(curl -s "http://127.0.0.1:$wbia_port/api/fake/chip_requests/" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["response"])')
cold_extractions=$(metric wbia_lightglue_extractions_total)
cold_pairs=$(metric wbia_lightglue_pairs_matched_total)
warm=$(run)
warm_chips=$(curl -s "http://127.0.0.1:$wbia_port/api/fake/chip_requests/" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["response"])')
store_bytes=$(du -sb "$work/data" | cut -f1)
printf '{"n": %d, "config": "%s", "cold_s": %.1f, "cold_peak_rss_mib": %d, "cold_chips_downloaded": %d, "cold_extractions": %d, "cold_pairs_matched": %d, "warm_s": %.2f, "warm_chips_downloaded": %d, "warm_extractions": %d, "peak_rss_mib": %d, "cache_bytes": %d, "store_bytes": %d}\n' \
  "$n" "$(printf '%s' "$config" | tr -d '"')" "$cold" "$cold_rss" "$cold_chips" "$cold_extractions" "$cold_pairs" "$warm" "$((warm_chips - cold_chips))" \
  "$(( $(metric wbia_lightglue_extractions_total) - cold_extractions ))" "$(rss)" \
  "$(metric wbia_lightglue_feature_cache_bytes)" "$store_bytes"
