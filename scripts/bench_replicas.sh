#!/usr/bin/env bash
# The same large engine job on R replicas sharing one PostgreSQL database (the scale-out
# profile's set-up, on one machine): one query against N species annotations at the real
# defaults, split in chunks of CHUNK; wall time from the job's start to `completed`, and what
# each replica did (chunks, extractions, pairs) from its /metrics.
#
#   scripts/bench_replicas.sh N R [PYTHON] [CHUNK]   # PYTHON: with numpy + opencv (fake WBIA)
#
# Uses target/release/wbia-lightglue (cargo build --release first). Prints one JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:?number of database annotations}"
replicas="${2:?number of replicas}"
py="${3:-python3}"
chunk="${4:-16}"
work=$(mktemp -d)
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh 54331
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; pg_stop; }
trap cleanup EXIT
wbia_port=5521
"$py" scripts/fake_wbia.py --port "$wbia_port" --species "$((n + 1))" > "$work/wbia.log" 2>&1 &
pids+=($!)
ports=()
for r in $(seq 1 "$replicas"); do
  port=$((5530 + r))
  ports+=("$port")
  mkdir -p "$work/config$r"
  ./target/release/wbia-lightglue serve --host 127.0.0.1 --port "$port" \
    --wbia-url "http://127.0.0.1:$wbia_port" --config-dir "$work/config$r" \
    --data-dir "$work/data$r" --database-url "$PG_URL" --chunk-annotations "$chunk" \
    > "$work/serve$r.log" 2>&1 &
  pids+=($!)
done
for port in "${ports[@]}"; do
  until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do sleep 0.5; done
done
until curl -sf "http://127.0.0.1:$wbia_port/api/test/heartbeat/" > /dev/null; do sleep 0.5; done
uuid() { printf '00000000-0000-0000-0001-%012x' "$1"; }
database=$(for i in $(seq 1002 $((1001 + n))); do printf '{"__UUID__": "%s"},' "$(uuid "$i")"; done)
base="http://127.0.0.1:${ports[0]}"
start=$(date +%s.%N)
curl -sf -X POST "$base/api/engine/query/graph/" \
  --data-urlencode "query_annot_uuid_list=[{\"__UUID__\": \"$(uuid 1001)\"}]" \
  --data-urlencode "database_annot_uuid_list=[${database%,}]" \
  --data-urlencode 'query_config_dict={"pipeline_root": "LightGlue"}' \
  --data-urlencode "jobid=bench" > /dev/null
until curl -sf "$base/api/engine/job/status/?jobid=bench" | grep -q '"completed"'; do
  if curl -sf "$base/api/engine/job/status/?jobid=bench" | grep -q '"exception"'; then
    echo "job failed" >&2; exit 1
  fi
  sleep 0.2
done
end=$(date +%s.%N)
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
per=""
for port in "${ports[@]}"; do
  per+=$(printf '{"chunks": %d, "extractions": %d, "pairs": %d},' \
    "$(metric "$port" wbia_lightglue_chunks_done_total)" \
    "$(metric "$port" wbia_lightglue_extractions_total)" \
    "$(metric "$port" wbia_lightglue_pairs_matched_total)")
done
printf '{"n": %d, "replicas": %d, "chunk": %d, "wall_s": %.1f, "per_replica": [%s]}\n' \
  "$n" "$replicas" "$chunk" "$(echo "$end - $start" | bc)" "${per%,}"
