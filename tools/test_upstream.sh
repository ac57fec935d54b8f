#!/usr/bin/env bash
# Run the test suite against an upstream VLMEvalKit checkout (a git clone of open-compass/VLMEvalKit, whose
# entry point is its top-level run.py) instead of PyPI's ms-vlmeval:
#   tools/test_upstream.sh VLMEVALKIT_ROOT [pytest arguments]
# The checkout is installed editable, with its own requirements, in .venv-upstream (built on first use, rebuilt
# when it holds another checkout); the tests build the documented command for the host they find.
set -euo pipefail
ROOT=${1:?usage: tools/test_upstream.sh VLMEVALKIT_ROOT [pytest arguments]}
shift
ROOT=$(cd "$ROOT" && pwd -P)
if [ ! -f "$ROOT/run.py" ] || [ ! -d "$ROOT/vlmeval" ]; then
  echo "$ROOT is not a VLMEvalKit checkout: it has no run.py and vlmeval/" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-upstream}
PY=${PYTHON:-python3}
installed_root() { "$VENV/bin/python" -c "import os, vlmeval; print(os.path.dirname(os.path.dirname(os.path.realpath(vlmeval.__file__))))" 2>/dev/null; }
if [ ! -x "$VENV/bin/python" ] || [ "$(installed_root)" != "$ROOT" ]; then
  echo "== installing $ROOT (editable) and vlmeval-prm into $VENV"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # the torch pair VLMEvalKit imports with on CPU-only Python 3.11, first (as .ci/install)
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" uninstall -q -y ms-vlmeval 2>/dev/null || true
  "$VENV/bin/pip" install -q -e "$ROOT"
  # imported by vlmeval/dataset/utils/mmlongbench_metrics.py but missing from requirements.txt (HEAD e8e78f0)
  "$VENV/bin/pip" install -q rouge-score
  "$VENV/bin/pip" install -q -e ".[transformers,lmdeploy,serve,test]"
  "$VENV/bin/pip" install -q --no-deps "lmdeploy==0.18.0"
fi
if [ "$(installed_root)" != "$ROOT" ]; then
  echo "$VENV imports vlmeval from $(installed_root), not $ROOT" >&2
  exit 1
fi
echo "== pytest against VLMEvalKit $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
