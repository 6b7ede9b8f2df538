#!/usr/bin/env bash
# Installs the reference implementation, nnU-Net v2 2.8.1, into a venv of its own, for the oracle
# tests (tests/*/test_*oracle*, `-m oracle`) and the side-by-side benchmarks in bench/. selfunet
# never imports it: tests and benchmarks run this venv's python in a subprocess.
#
#   bench/reference/setup_reference.sh [VENV]
#
# VENV defaults to ${XDG_CACHE_HOME:-~/.cache}/selfunet-reference (outside the repository, so a
# clean clone stays clean and the venv is reused between runs). A VENV that already imports
# nnunetv2 is kept as it is. The last line printed is the venv's python: CI exports it as
# SELFUNET_REFERENCE_PYTHON.
#
# What it takes care of:
# * torch and torchvision are installed first, in one resolve, at versions that belong together
#   (2.13.0 / 0.28.0; override with SELFUNET_REFERENCE_TORCH / _TORCHVISION). Installing nnunetv2
#   alone lets pip take the newest torchvision, which requires a newer CUDA build of torch
#   (several GB) even on a CPU machine. SELFUNET_TORCH_INDEX (as for .ci/setup) adds an index,
#   e.g. https://download.pytorch.org/whl/cpu for CPU builds of both.
# * a torchvision wheel built for CUDA next to a CPU torch fails at `import torchvision`
#   ("operator torchvision::nms does not exist"): its import registers shape functions for its
#   compiled NMS operators, which that combination lacks. nnunetv2 imports torchvision (through
#   timm) but uses none of its operators, so when (and only when) that import fails, the two
#   registrations are made conditional on the operators being present. The check afterwards
#   imports everything the oracle tests use.
set -euo pipefail
VENV=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/selfunet-reference}
PY="$VENV/bin/python"
CHECK='import torch, torchvision, sklearn, nnunetv2, dynamic_network_architectures'

if [ -x "$PY" ] && "$PY" -c "$CHECK" >/dev/null 2>&1; then
  echo "reference already installed in $VENV" >&2
  echo "$PY"
  exit 0
fi

python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip >&2
"$PY" -m pip install -q "torch==${SELFUNET_REFERENCE_TORCH:-2.13.0}" \
  "torchvision==${SELFUNET_REFERENCE_TORCHVISION:-0.28.0}" \
  ${SELFUNET_TORCH_INDEX:+--extra-index-url "$SELFUNET_TORCH_INDEX"} >&2
"$PY" -m pip install -q "nnunetv2==2.8.1" >&2

if ! "$PY" -c 'import torchvision' >/dev/null 2>&1; then
  echo "torchvision's compiled operators do not load next to this torch: guarding its NMS registrations" >&2
  "$PY" - <<'PY' >&2
import importlib.util
import re
from pathlib import Path

folder = Path(importlib.util.find_spec("torchvision").submodule_search_locations[0])
target = folder / "_meta_registrations.py"
text = target.read_text()
pattern = re.compile(r'^@torch\.library\.register_fake\("(torchvision::q?nms)"\)$', re.MULTILINE)
guarded, count = pattern.subn(
    r'@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda f: f))', text)
if count == 0:
    raise SystemExit(f"{target}: no NMS registration found to guard; this torchvision needs another fix")
target.write_text(guarded)
print(f"{target}: guarded {count} registration(s)")
PY
fi

"$PY" -c "$CHECK; print('reference ready: torch', torch.__version__, 'nnunetv2 2.8.1')" >&2
echo "$PY"
