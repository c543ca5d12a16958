#!/usr/bin/env bash
# Create the FuxiCTR peer virtual environment (kept apart from ours: FuxiCTR pins its own
# polars/ray/pandas versions). CPU torch is installed first and pinned to the version our
# venv uses, so pip never pulls the multi-GB CUDA wheels and both sides run the same torch.
#
#   bench/peers/setup_fuxictr.sh [VENV_DIR]          default: .peer-venv (repo root, git-ignored)
#
# The pip package holds the FuxiCTR library but not its model zoo (DIN, FinalMLP); get that
# with  git clone --depth 1 --branch v2.3.10 https://github.com/reczoo/FuxiCTR  and pass the
# checkout to run_fuxictr.py / compare.py as --fuxictr-src.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$ROOT/.peer-venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
FUXICTR_VERSION="${FUXICTR_VERSION:-2.3.10}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<PY 2>/dev/null
import fuxictr, torch
assert fuxictr.__version__ == "$FUXICTR_VERSION", fuxictr.__version__
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", torch.__version__
PY
then
    echo "peer venv ready: $VENV (fuxictr $FUXICTR_VERSION, torch $TORCH_VERSION)"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION"
"$VENV/bin/pip" install --quiet "fuxictr==$FUXICTR_VERSION"
"$VENV/bin/python" -c "import fuxictr, torch; print('peer venv ready:', '$VENV', 'fuxictr', fuxictr.__version__, 'torch', torch.__version__)"
