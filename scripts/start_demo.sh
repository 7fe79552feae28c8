#!/usr/bin/env bash
# Starts the AFLoc Label demo: installs the environment if needed, builds the demo datastore and
# checkpoint if missing (scripts/build_demo.py: about 15 s, the model ships in demo/model), then runs the
# MONAI Label server on http://127.0.0.1:8000 (Slicer: MONAILabel or AFLoc module; for OHIF in the
# browser use scripts/start_ohif_mode.sh, which serves the images over DICOMweb).
#
# Usage: bash scripts/start_demo.sh [extra monailabel start_server arguments...]
#   e.g. bash scripts/start_demo.sh --conf device cpu
#
# Environment overrides:
#   AFLOC_HOST (127.0.0.1)  AFLOC_PORT (8000)  AFLOC_STUDIES (demo/datastore)
#   AFLOC_CHECKPOINT (demo/checkpoint)  AFLOC_MODEL_DIR (apps/afloc_label/model: trained runs)
#   AFLOC_CXR_NOTES (../shared/data/cxr-notes)
#   MONAI_LABEL_* settings (e.g. MONAI_LABEL_AUTH_ENABLE=true, see docs/app.md) pass through.
# Binding to anything but 127.0.0.1 exposes the server to the network: enable authentication first
# and add --conf allow_remote true (docs/security.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/env.sh"
set -euo pipefail  # env.sh switches these off again for interactive shells that source it

HOST="${AFLOC_HOST:-127.0.0.1}"
PORT="${AFLOC_PORT:-8000}"
STUDIES="${AFLOC_STUDIES:-$ROOT/demo/datastore}"
CHECKPOINT="${AFLOC_CHECKPOINT:-$ROOT/demo/checkpoint}"
MODEL_DIR="${AFLOC_MODEL_DIR:-$ROOT/apps/afloc_label/model}"
CXR_NOTES="${AFLOC_CXR_NOTES:-$ROOT/../shared/data/cxr-notes}"

python "$ROOT/scripts/build_demo.py" --datastore "$STUDIES" --checkpoint "$CHECKPOINT" --cxr-notes "$CXR_NOTES"

if [ "$HOST" != "127.0.0.1" ] && [ "$HOST" != "localhost" ]; then
  echo "[start_demo] binding to $HOST needs --conf allow_remote true (the server refuses otherwise); see docs/security.md" >&2
  if [ "${MONAI_LABEL_AUTH_ENABLE:-false}" != "true" ]; then
    echo "[start_demo] warning: no MONAI_LABEL_AUTH_ENABLE=true: anyone who reaches $HOST:$PORT can use the server" >&2
  fi
fi
echo "[start_demo] AFLoc Label on http://$HOST:$PORT  (API docs /docs; for OHIF run scripts/start_ohif_mode.sh; stop with Ctrl-C)" >&2
cd "$ROOT"
exec python -m monailabel.main start_server \
  --app "$ROOT/apps/afloc_label" \
  --studies "$STUDIES" \
  --host "$HOST" --port "$PORT" \
  --conf checkpoint "$CHECKPOINT" \
  --conf model_dir "$MODEL_DIR" \
  "$@"
