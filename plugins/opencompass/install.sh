#!/usr/bin/env bash
# Create a virtual environment for OpenCompass 0.5.4 with VLMEvalKit (ms-vlmeval) and vlmeval-prm.
# OpenCompass pins (numpy<2, datasets<4, httpx==0.27.2, ...) clash with a VLMEvalKit environment, so
# it gets its own. Left alone, pip picks a pyarrow that needs NumPy 2 and the VLMEvalKit bridge fails
# to import; the pins below import together. A finished environment is reused while the pins and
# pyproject.toml stay the same (the stamp file holds both).
# Usage: plugins/opencompass/install.sh [VENV_DIR]   (default: .venv-opencompass in the checkout)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-$ROOT/.venv-opencompass}"
PY=${PYTHON:-python3}
PINS="opencompass==0.5.4 ms-vlmeval==0.0.20 numpy==1.26.4 pyarrow==19.0.1 pandas==2.2.3"
TORCH="torch==2.14.1 torchvision==0.29.1"
STAMP="$VENV/.vlmeval-prm-pins"
WANT="$TORCH $PINS $(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    echo "OpenCompass environment ready: $VENV"
    exit 0
fi
if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    echo "$VENV exists and is not a virtual environment: not replacing it" >&2
    exit 1
fi
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q $TORCH
# vlmeval-prm editable: the environment follows the checkout (its datasets, the OpenCompass evaluator).
"$VENV/bin/pip" install -q $TORCH $PINS -e "$ROOT[vlmevalkit]"
"$VENV/bin/python" -c "import vlmeval, vlmeval_prm; from opencompass.datasets.vlmevalkit import VLMEvalKitDataset"
"$VENV/bin/python" -c "import vlmeval_prm_hook" 2>/dev/null || "$VENV/bin/vlmeval-prm" install-hook
echo "$WANT" > "$STAMP"
echo "OpenCompass environment ready: $VENV"
