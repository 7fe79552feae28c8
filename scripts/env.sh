#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment and activates it.
# Source it: `. scripts/env.sh`. The venv lives outside the checkout so fresh clones reuse it;
# a stamp of setup.py + constraints.txt decides whether pip must run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AFLOC_VENV:-$HOME/.venvs/afloc}"
STAMP_WANT="$(cat "$ROOT/setup.py" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating virtual environment in $VENV" >&2
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if [ "$(cat "$VENV/.afloc-stamp" 2>/dev/null)" != "$STAMP_WANT" ]; then
  echo "[env] installing dependencies (first run: about 8 minutes on a fresh 2-core machine, mostly PyTorch)" >&2
  python -m pip install -q --upgrade pip >/dev/null
  # torch first, from its exact pin: see constraints.txt.
  python -m pip install -q -c "$ROOT/constraints.txt" torch torchvision
  python -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[server,test]"
  echo "$STAMP_WANT" > "$VENV/.afloc-stamp"
fi
# The editable install registers the packages; the app folder is imported by path.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +euo pipefail
