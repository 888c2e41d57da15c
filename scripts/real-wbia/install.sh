#!/usr/bin/env bash
# Installs the real WBIA (wildbook-ia 4.0.4, PyPI) into a Python 3.11 virtual environment,
# CPU only, without its detectors: see README.md beside this file.
#
#   scripts/real-wbia/install.sh VENV_DIR
#
# Re-runnable: every step checks whether it is done already. Environment:
#   PYTHON   the interpreter for the venv (default python3.11)
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
VENV=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3.11}

log() { printf '[install] %s\n' "$*"; }

# 1. The venv.
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { echo "the venv's Python must be 3.11 (pins and cp310 wheels are chosen for it)" >&2; exit 1; }
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pip_install() { "$PY" -m pip install --disable-pip-version-check --no-input --no-deps "$@"; }
installed() { "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

# 2. WBIA itself and utool, without their (Python 3.7-era, GPU) dependency pins.
if installed wildbook-ia 4.0.4 && installed wbia-utool 4.0.5; then
    log "wildbook-ia 4.0.4 and wbia-utool 4.0.5: present"
else
    pip_install wildbook-ia==4.0.4 wbia-utool==4.0.5
fi

# 3. The dependencies that work on 3.11 (no torch, no CUDA), also without dependency resolution.
#    A stamp holding the requirements' checksum skips this when nothing changed.
REQ="$HERE/requirements.txt"
STAMP="$VENV/.real-wbia-requirements.sha256"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(sha256sum "$REQ" | cut -d' ' -f1)" ]; then
    log "requirements.txt: installed"
else
    pip_install -r "$REQ"
    sha256sum "$REQ" | cut -d' ' -f1 > "$STAMP"
fi

# 4. wbia-vtool / wbia-pyflann / wbia-pyhesaff have no cp311 wheels; their cp310 wheels hold
#    pure Python plus ctypes libraries (no extension modules), so unpacking them works.
for spec in wbia-vtool==4.0.2:vtool wbia-pyflann==4.0.4:pyflann wbia-pyhesaff==4.0.0:pyhesaff; do
    req=${spec%%:*}
    mod=${spec##*:}
    name=${req%%==*}
    version=${req##*==}
    dist=${name//-/_}-$version.dist-info
    if [ -d "$SITE/$dist" ] && [ -f "$SITE/$mod/__init__.py" ]; then
        log "$req: present"
        continue
    fi
    WHEELS="$VENV/real-wbia-wheels"
    mkdir -p "$WHEELS"
    if ! ls "$WHEELS/${name//-/_}-$version-"*.whl >/dev/null 2>&1; then
        "$PY" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
            --python-version 3.10 --implementation cp --abi cp310 \
            --platform manylinux2014_x86_64 --dest "$WHEELS" "$req"
    fi
    whl=$(ls "$WHEELS/${name//-/_}-$version-"*.whl | head -n1)
    log "unpacking $(basename "$whl")"
    "$PY" -m zipfile -e "$whl" "$SITE"
done

# 5. Stand-ins for torch (WBIA subclasses torch.utils.data.Dataset at import time) and theano
#    (every identification job starts with an unused `import theano`). A real package of the
#    same name, if one is installed, is kept.
for mod in torch theano; do
    if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$mod') is None)" \
        && ! [ -f "$SITE/$mod/.real-wbia-standin" ]; then
        log "a real $mod is installed: keeping it, no stand-in"
    else
        rm -rf "$SITE/$mod"
        cp -r "$HERE/standins/$mod" "$SITE/$mod"
        touch "$SITE/$mod/.real-wbia-standin"
        log "$mod stand-in: installed"
    fi
done

# 6. Python 3.11 shims (inspect.getargspec/formatargspec, distutils.version).
cp "$HERE/sitecustomize.py" "$SITE/sitecustomize.py"

# 7. Source patches: pyhesaff without libhesaff.so; the web server on 127.0.0.1 only.
"$PY" "$HERE/patch_wbia.py" "$SITE"

# 8. Smoke test: WBIA and the chip code import.
"$PY" -c 'import wbia, vtool, pyflann, pyhesaff, torch, theano; print("[install] import wbia: ok; torch", torch.__version__, "theano", theano.__version__)'
log "done: $VENV"
