#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA driver (CUDA 13) and no cargo. Run from the
# repository root with the bundle made by scripts/gpu-bundle.sh:
#
#   scripts/gpu-check.sh [BUNDLE_DIR]        # default gpu-bundle
#   PARTS=tests scripts/gpu-check.sh         # only 1; PARTS=bench: only 2 and 3
#
# Weights missing from weights/ are unpacked from the bundle's packed copies first, so the
# repository part that travels can leave them out.
#
# 1. CUDA tests: our kernels against their CPU twins, extraction on CUDA against the CPU and
#    the PyTorch goldens (a photo and the sweep's extremes), matching against the CPU (f32
#    pair scores within 1e-3), f16/bf16 within 2% of f32, batched == single, and the
#    aliked-n16rot and aliked-n32 variants against the CPU.
# 2. `wbia-lightglue bench` on CUDA in f32, f16 and bf16.
# 3. The PyTorch reference's bench on the same GPU, and the ratio table (scripts/bench_table.py).
# Results go to $OUT (default target/gpu-check): summary.txt, cuda-tests.log, run.log
# (everything else printed), ours-{f32,f16,bf16}.json, reference.json. Needs python3
# with torch, torchvision, opencv, numpy and safetensors (the reference), and xz.
set -uo pipefail
cd "$(dirname "$0")/.."
bundle="${1:-gpu-bundle}"
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
repeat="${REPEAT:-10}"
parts="${PARTS:-tests bench}"
status=0

log="$out/run.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/summary.txt"

# CUDA 13 runtime libraries (cudart, cublas, curand, nvrtc): the system's, else those of the
# Python nvidia-* wheels that PyTorch uses.
if ! ldconfig -p | grep -q 'libcublas.so.13'; then
  libs=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for f in glob.glob(os.path.join(sp, "nvidia", "**", "lib", "lib*.so.*"), recursive=True):
        dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

mkdir -p weights
for packed in "$bundle"/weights/*.planes.xz; do
  [ -e "$packed" ] || continue
  w="weights/$(basename "$packed" .planes.xz)"
  [ -s "$w" ] || python3 scripts/gpu-weights.py unpack "$packed" "$w" || status=1
done

bin=$(mktemp -d)
for f in wbia-lightglue cuda-tests; do
  # a part's run may carry only its own binary
  [ -e "$bundle/$f.xz" ] && xz -dc "$bundle/$f.xz" > "$bin/$f" && chmod +x "$bin/$f"
done

if [[ " $parts " == *" tests "* ]]; then
echo "== CUDA tests" | tee -a "$out/summary.txt"
if ! WBIA_LIGHTGLUE_REQUIRE_CUDA=1 WBIA_LIGHTGLUE_REPO="$PWD" "$bin/cuda-tests" --nocapture --test-threads 1 2>&1 | tee "$out/cuda-tests.log"; then
  status=1
fi
grep -E "test result|rel|within" "$out/cuda-tests.log" >> "$out/summary.txt"
fi
[[ " $parts " == *" bench "* ]] || exit $status

echo "== wbia-lightglue bench (cuda)" | tee -a "$out/summary.txt"
for p in f32 f16 bf16; do
  if ! "$bin/wbia-lightglue" bench --device cuda --precision "$p" --repeat "$repeat" \
      --batch-size 64 > "$out/ours-$p.json" 2>> "$log"; then
    echo "bench $p failed (see run.log)" | tee -a "$out/summary.txt"
    status=1
  fi
done

echo "== PyTorch reference bench (cuda)" | tee -a "$out/summary.txt"
site_dir=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site_dir" "$bundle"/wheels/*.whl >> "$log" 2>&1
if PYTHONPATH="$bundle/reference:$site_dir" python3 scripts/reference/bench_reference.py \
    --device cuda --repeat "$repeat" --weights-dir weights > "$out/reference.json" 2>> "$log"; then
  # bench_table.py reads rounds: directories holding reference.json, ours.json, ours-bf16.json
  round=$(mktemp -d)
  cp "$out/reference.json" "$round/reference.json"
  cp "$out/ours-f32.json" "$round/ours.json"
  [ -s "$out/ours-bf16.json" ] && cp "$out/ours-bf16.json" "$round/ours-bf16.json"
  python3 scripts/bench_table.py "$round" | tee -a "$out/summary.txt"
else
  echo "reference bench failed (see run.log)" | tee -a "$out/summary.txt"
  status=1
fi
for p in f16 bf16; do
  [ -s "$out/ours-$p.json" ] && python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
print(sys.argv[2], {k: v for k, v in d.items() if k.endswith(("_ms", "_per_s"))})' "$out/ours-$p.json" "$p" \
    | tee -a "$out/summary.txt"
done
exit $status
