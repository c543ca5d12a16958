#!/usr/bin/env bash
# Create the RecBole peer virtual environment (kept apart from ours and from FuxiCTR's: RecBole pins
# colorlog/colorama exactly and ray <= 2.6.3). CPU torch is installed first and pinned to the version
# our venv uses, so pip never pulls the multi-GB CUDA wheels and both sides run the same torch.
#
#   bench/peers/setup_recbole.sh [VENV_DIR]          default: .peer-venv-recbole (repo root, git-ignored)
#
# Pins RecBole 1.2.1 needs on Python 3.11 (README.md, RecBole peer, says why): numpy < 2 (its
# Config aliases np.float_ & co., removed in numpy 2.0: AttributeError at Config()), and with it
# pandas < 3 (pandas 3 requires numpy >= 2). RecBole itself pins colorlog==4.7.2, colorama==0.4.4
# and ray<=2.6.3 (pip resolves ray 2.6.3, which has Python 3.11 wheels).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$ROOT/.peer-venv-recbole}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
RECBOLE_VERSION="${RECBOLE_VERSION:-1.2.1}"
PYTHON="${PYTHON:-python3}"
PINS=(${RECBOLE_PINS:-"numpy<2" "pandas<3"})

check() {
    "$VENV/bin/python" - <<PY
import warnings
warnings.simplefilter("ignore")
import torch, recbole
from recbole.model.sequential_recommender import SASRec
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.config import Config
import tempfile
Config(model="SASRec", dataset="check", config_dict={"use_gpu": False, "data_path": tempfile.gettempdir(),
                                                  "train_neg_sample_args": None})  # numpy 2: np.float_ error
assert recbole.__version__ == "$RECBOLE_VERSION", recbole.__version__
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", torch.__version__
import numpy, scipy, pandas
print("peer venv ready: $VENV recbole", recbole.__version__, "torch", torch.__version__,
      "numpy", numpy.__version__, "scipy", scipy.__version__, "pandas", pandas.__version__)
PY
}

if [ -x "$VENV/bin/python" ] && check 2>/dev/null; then
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION"
"$VENV/bin/pip" install --quiet "recbole==$RECBOLE_VERSION" "torch==$TORCH_VERSION" "${PINS[@]}"
check
