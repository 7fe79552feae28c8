#!/usr/bin/env bash
# One command for the OHIF (DICOMweb) mode: a local Orthanc holding the demo chest CR and DX
# images, and the AFLoc Label server reading its studies from Orthanc over DICOMweb. Open
# http://127.0.0.1:8000/ohif/ once it says so. Ctrl-C stops both.
#
# Usage: bash scripts/start_ohif_mode.sh [--port 8000] [--orthanc-port 8042] [--workdir runs/ohif]
#                                        [--checkpoint DIR] [--model-dir DIR] [--dicom FILE_OR_DIR]... [--no-demo]
#   --port          MONAI Label server port (it listens on 127.0.0.1 only)
#   --orthanc-port  Orthanc HTTP port (DICOMweb at /dicom-web); Orthanc's DICOM port stays off
#   --workdir       Orthanc's storage, the server's DICOM cache, logs (default runs/ohif)
#   --model-dir     where training runs and the served model live (default WORKDIR/model)
#   --checkpoint    AFLoc checkpoint folder (default: $AFLOC_CHECKPOINT, else demo/checkpoint,
#                   built by scripts/build_demo.py the first time)
#   --dicom         more DICOM files (or folders of them) to upload; repeatable
#   --no-demo       do not upload the demo CR/DX images and their SR reports
# Environment: AFLOC_PYTHON (a Python with the project installed; default: scripts/env.sh's venv).
#
# Orthanc has no bind-address option and listens on every interface, with remote access refused
# (RemoteAccessAllowed false) and no DICOM port; the server listens on 127.0.0.1 only. Automated
# runs put everything, the browser included, in a private network namespace (see
# tests/browser/run_in_netns.sh and docs/ohif.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT=8000
ORTHANC_PORT=8042
WORKDIR="$ROOT/runs/ohif"
CHECKPOINT="${AFLOC_CHECKPOINT:-}"
MODEL_DIR=""
DEMO=1
EXTRA_DICOM=()
ORTHANC_DICOMWEB_PLUGIN="/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

log() { echo "[start_ohif_mode] $*" >&2; }
die() { log "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --orthanc-port) ORTHANC_PORT="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --checkpoint) CHECKPOINT="$2"; shift 2 ;;
    --model-dir) MODEL_DIR="$2"; shift 2 ;;
    --dicom) EXTRA_DICOM+=("$2"); shift 2 ;;
    --no-demo) DEMO=0; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
for value in "$PORT" "$ORTHANC_PORT"; do
  [[ "$value" =~ ^[0-9]+$ ]] && [ "$value" -ge 1 ] && [ "$value" -le 65535 ] || die "'$value' is not a TCP port"
done
[ "$PORT" != "$ORTHANC_PORT" ] || die "the server and Orthanc need different ports"

# ------------------------------------------------------------------ dependencies
if ! command -v Orthanc >/dev/null 2>&1 || [ ! -e "$ORTHANC_DICOMWEB_PLUGIN" ]; then
  log "Orthanc or its DICOMweb plugin is missing: running scripts/install_system_deps.sh"
  bash "$ROOT/scripts/install_system_deps.sh"
fi
if [ -n "${AFLOC_PYTHON:-}" ]; then
  PY="$AFLOC_PYTHON"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  # shellcheck disable=SC1091
  . "$ROOT/scripts/env.sh"
  set -euo pipefail  # env.sh switches these off for interactive shells
  PY="$(command -v python)"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# The demo checkpoint is built once when none is given (scripts/build_demo.py: a few minutes).
if [ -z "$CHECKPOINT" ]; then
  CHECKPOINT="$ROOT/demo/checkpoint"
  "$PY" "$ROOT/scripts/build_demo.py" --only checkpoint --checkpoint "$CHECKPOINT"
fi
[ -d "$CHECKPOINT" ] || die "checkpoint '$CHECKPOINT' is not a folder"
CHECKPOINT="$(cd "$CHECKPOINT" && pwd)"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_busy "$ORTHANC_PORT" && die "port $ORTHANC_PORT is in use (another Orthanc?); pick one with --orthanc-port"
port_busy "$PORT" && die "port $PORT is in use; pick one with --port"

mkdir -p "$WORKDIR"
WORKDIR="$(cd "$WORKDIR" && pwd)"
ORTHANC_PID=""
cleanup() {
  if [ -n "$ORTHANC_PID" ] && kill -0 "$ORTHANC_PID" 2>/dev/null; then
    kill "$ORTHANC_PID" 2>/dev/null || true
    wait "$ORTHANC_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ Orthanc
mkdir -p "$WORKDIR/orthanc-db"
cat > "$WORKDIR/orthanc.json" <<JSON
{
  "Name": "AFLoc Label demo",
  "StorageDirectory": "$WORKDIR/orthanc-db",
  "IndexDirectory": "$WORKDIR/orthanc-db",
  "Plugins": ["$ORTHANC_DICOMWEB_PLUGIN"],
  "HttpPort": $ORTHANC_PORT,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "DicomServerEnabled": false,
  "WebDavEnabled": false,
  "ExecuteLuaEnabled": false,
  "DicomWeb": {
    "Enable": true,
    "Root": "/dicom-web/",
    "EnableWado": true,
    "WadoRoot": "/wado",
    "Host": "127.0.0.1:$ORTHANC_PORT",
    "Ssl": false
  }
}
JSON
log "starting Orthanc: HTTP port $ORTHANC_PORT, remote access refused, DICOM port off (log: $WORKDIR/orthanc.log)"
Orthanc "$WORKDIR/orthanc.json" >"$WORKDIR/orthanc.log" 2>&1 &
ORTHANC_PID=$!
ORTHANC_URL="http://127.0.0.1:$ORTHANC_PORT"
for _ in $(seq 1 150); do
  curl -sf "$ORTHANC_URL/system" >/dev/null 2>&1 && break
  kill -0 "$ORTHANC_PID" 2>/dev/null || die "Orthanc exited; see $WORKDIR/orthanc.log"
  sleep 0.2
done
curl -sf "$ORTHANC_URL/system" >/dev/null || die "Orthanc did not answer within 30 s; see $WORKDIR/orthanc.log"

upload() {
  local reply
  reply="$(curl -sS -X POST -H 'Expect:' --data-binary "@$1" "$ORTHANC_URL/instances")" \
    || die "upload of $1 to Orthanc failed"
  grep -q '"Status" : "\(Success\|AlreadyStored\)"' <<<"$reply" || die "Orthanc refused $1: $reply"
  log "in Orthanc: $(basename "$1")"
}
if [ "$DEMO" -eq 1 ]; then
  "$PY" "$ROOT/scripts/make_ohif_demo_dicoms.py" "$WORKDIR/demo-dicom" >/dev/null
  for file in "$WORKDIR"/demo-dicom/*.dcm; do upload "$file"; done
fi
for item in "${EXTRA_DICOM[@]+"${EXTRA_DICOM[@]}"}"; do
  [ -e "$item" ] || die "--dicom '$item' does not exist"
  while IFS= read -r -d '' file; do upload "$file"; done < <(find "$item" -type f -print0)
done

# ------------------------------------------------------------------ MONAI Label server
# Projection radiographs are CR or DX (QIDO-RS: a comma-separated list matches either).
if [ -z "${MONAI_LABEL_DICOMWEB_SEARCH_FILTER:-}" ]; then
  MONAI_LABEL_DICOMWEB_SEARCH_FILTER='{"Modality": "CR,DX"}'
fi
export MONAI_LABEL_DICOMWEB_SEARCH_FILTER
# Hand the task the downloaded DICOM itself: the NIfTI conversion drops MONOCHROME1 and spacing.
export MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI=false
export MONAI_LABEL_DICOMWEB_CACHE_PATH="$WORKDIR/dicom-cache"

log "starting the AFLoc Label server (studies: $ORTHANC_URL/dicom-web)"
log "viewer: http://127.0.0.1:$PORT/ohif/ -> pick a study -> 'AFLoc (X-ray)'"
cd "$ROOT"
"$PY" -m monailabel.main start_server \
  --app "$ROOT/apps/afloc_label" \
  --studies "$ORTHANC_URL/dicom-web" \
  --host 127.0.0.1 --port "$PORT" \
  --conf checkpoint "$CHECKPOINT" --conf model_dir "${MODEL_DIR:-$WORKDIR/model}" &
SERVER_PID=$!
# Forward Ctrl-C/TERM to the server, then stop Orthanc (cleanup on EXIT).
trap 'kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; exit 130' INT
trap 'kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; exit 143' TERM
status=0
wait "$SERVER_PID" || status=$?
exit "$status"
