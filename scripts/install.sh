#!/usr/bin/env bash
# Install crystalformer-rl with everything its tests need, without letting pip swap torch for another build.
#   bash scripts/install.sh            # torch 2.13.0 from the configured index (PyPI's Linux wheel is the CUDA build), then the package
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/install.sh   # force PyTorch's CPU index
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    "$PYTHON" -m pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"
  else
    "$PYTHON" -m pip install "torch==${TORCH_VERSION}"
  fi
fi
# Pin whatever torch is now installed, so that no dependency replaces it with a multi-GB build.
constraints=$(mktemp)
"$PYTHON" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$constraints"
"$PYTHON" -m pip install -c "$constraints" -e ".[${EXTRAS:-dev}]"
rm -f "$constraints"
