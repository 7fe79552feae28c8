#!/usr/bin/env bash
# Runs the OHIF end-to-end check inside a private network namespace:
#   unshare -n bash tests/browser/run_in_netns.sh OUT_DIR CHECKPOINT [PROMPT [MODALITY [SUITE]]]
# MODALITY (CR or DX, default CR) picks the demo study opened in the viewer. SUITE: `stock`
# (default; the stock MONAI Label panel, ohif_e2e.js + dicomweb_checks.py), `panel` (the AFLoc
# panel, ohif_panel_e2e.js) or `auth` (authentication on, with tests/token_issuer.py in the
# namespace as the identity provider; sign-in in the viewer, ohif_auth_e2e.js).
# Orthanc (which listens on every interface), the AFLoc Label server and Chromium all live in
# the namespace, where the only interface is loopback: nothing is reachable from outside and
# nothing outside is reachable from the browser.
# Environment: AFLOC_PYTHON (Python with the project installed, required), AFLOC_E2E_TIMEOUT_S
# (browser part, default 100), AFLOC_STACK_ARGS (more options for start_ohif_mode.sh, e.g.
# "--no-demo --dicom DIR"), AFLOC_E2E_NO_MODEL_CHECK (1: the panel suite moves CHECKPOINT aside at
# the end to see the "no model" message; give it a copy), AFLOC_NETNS_CHECK (a Python script run instead of the browser, as
# SCRIPT SERVER_URL DICOMWEB_URL OUT_DIR WORKDIR; its exit status is this script's).
# Writes OUT_DIR/server.log, what ohif_e2e.js writes and OUT_DIR/dicomweb.json
# (tests/browser/dicomweb_checks.py).
set -euo pipefail
OUT="$1"
CHECKPOINT="$2"
PROMPT="${3:-right pleural effusion}"
MODALITY="${4:-CR}"
SUITE="${5:-stock}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PORT=8000
ORTHANC_PORT=8042
mkdir -p "$OUT"
: "${AFLOC_PYTHON:?set AFLOC_PYTHON to the Python of the project}"

ip link set lo up
# Refuse to run where other interfaces exist: that is not a private namespace.
if ip -o link show | awk -F': ' '{print $2}' | grep -qv '^lo$'; then
  echo "run_in_netns.sh: interfaces other than lo exist; run it under 'unshare -n'" >&2
  exit 3
fi

ISSUER_PID=""
if [ "$SUITE" = "auth" ]; then
  # Authentication on, against a local token issuer (tests/token_issuer.py) in this namespace.
  ISSUER_PORT=8090
  "$AFLOC_PYTHON" "$ROOT/tests/token_issuer.py" --port "$ISSUER_PORT" >"$OUT/issuer.log" 2>&1 &
  ISSUER_PID=$!
  export MONAI_LABEL_AUTH_ENABLE=true
  export MONAI_LABEL_AUTH_REALM_URI="http://127.0.0.1:$ISSUER_PORT/realms/afloc"
  for _ in $(seq 1 60); do
    curl -sf "$MONAI_LABEL_AUTH_REALM_URI" >/dev/null 2>&1 && break
    sleep 0.5
  done
fi

read -r -a STACK_ARGS <<<"${AFLOC_STACK_ARGS:-}"
bash "$ROOT/scripts/start_ohif_mode.sh" --port "$PORT" --orthanc-port "$ORTHANC_PORT" \
  --workdir "$OUT/work" --checkpoint "$CHECKPOINT" "${STACK_ARGS[@]+"${STACK_ARGS[@]}"}" >"$OUT/server.log" 2>&1 &
STACK_PID=$!
stop_stack() {
  if kill -0 "$STACK_PID" 2>/dev/null; then
    kill -TERM "$STACK_PID" 2>/dev/null || true
    wait "$STACK_PID" 2>/dev/null || true
  fi
  if [ -n "$ISSUER_PID" ] && kill -0 "$ISSUER_PID" 2>/dev/null; then
    kill -TERM "$ISSUER_PID" 2>/dev/null || true
    wait "$ISSUER_PID" 2>/dev/null || true
  fi
}
trap stop_stack EXIT

# Up: /info/ answers (200, or 401 with authentication on).
server_up() {
  case "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/info/" 2>/dev/null)" in
    200 | 401) return 0 ;;
    *) return 1 ;;
  esac
}
for _ in $(seq 1 240); do
  server_up && break
  kill -0 "$STACK_PID" 2>/dev/null || { echo "the server stack exited; see $OUT/server.log" >&2; tail -30 "$OUT/server.log" >&2; exit 4; }
  sleep 0.5
done
server_up || { echo "server not up after 120 s" >&2; tail -30 "$OUT/server.log" >&2; exit 4; }

if [ -n "${AFLOC_NETNS_CHECK:-}" ]; then
  status=0
  "$AFLOC_PYTHON" "$AFLOC_NETNS_CHECK" "http://127.0.0.1:$PORT" "http://127.0.0.1:$ORTHANC_PORT/dicom-web" \
    "$OUT" "$OUT/work" || status=$?
  exit "$status"
fi

# The MODALITY study is opened in the viewer; every image series is checked for its geometry.
qido() { curl -sf "http://127.0.0.1:$ORTHANC_PORT/dicom-web/$1"; }
# Prints the value of DICOM tag $1 (e.g. 0020000D) of every QIDO-RS result on stdin, one a line.
uids() { "$AFLOC_PYTHON" -c 'import json, sys
for item in json.load(sys.stdin):
    print(item[sys.argv[1]]["Value"][0])' "$1"; }
STUDY="$(qido "studies?ModalitiesInStudy=$MODALITY" | uids 0020000D | head -n 1)"
[ -n "$STUDY" ] || { echo "no $MODALITY study in Orthanc" >&2; exit 4; }
series_args=()
while IFS= read -r uid; do
  series_args+=(--check-series "$uid")
done < <(qido 'series?Modality=CR' | uids 0020000E; qido 'series?Modality=DX' | uids 0020000E)

status=0
if [ "$SUITE" = "auth" ]; then
  SERIES="$(qido "studies/$STUDY/series?Modality=$MODALITY" | uids 0020000E | head -n 1)"
  node "$ROOT/tests/browser/ohif_auth_e2e.js" --base-url "http://127.0.0.1:$PORT" --study "$STUDY" \
    --series "$SERIES" --out "$OUT" --prompt "$PROMPT" --timeout-s "${AFLOC_E2E_TIMEOUT_S:-180}" || status=$?
  exit "$status"
fi
if [ "$SUITE" = "panel" ]; then
  SERIES="$(qido "studies/$STUDY/series?Modality=$MODALITY" | uids 0020000E | head -n 1)"
  # AFLOC_E2E_NO_MODEL_CHECK=1: CHECKPOINT is a copy the browser run may move aside for a while.
  no_model_args=()
  if [ "${AFLOC_E2E_NO_MODEL_CHECK:-}" = "1" ]; then no_model_args=(--checkpoint-dir "$CHECKPOINT"); fi
  node "$ROOT/tests/browser/ohif_panel_e2e.js" --base-url "http://127.0.0.1:$PORT" \
    --orthanc-url "http://127.0.0.1:$ORTHANC_PORT" --study "$STUDY" --series "$SERIES" --out "$OUT" \
    "${no_model_args[@]+"${no_model_args[@]}"}" --prompt "$PROMPT" --report "${AFLOC_E2E_REPORT:-}" --timeout-s "${AFLOC_E2E_TIMEOUT_S:-240}" || status=$?
  exit "$status"
fi
node "$ROOT/tests/browser/ohif_e2e.js" --base-url "http://127.0.0.1:$PORT" --study "$STUDY" \
  --out "$OUT" --prompt "$PROMPT" --timeout-s "${AFLOC_E2E_TIMEOUT_S:-100}" "${series_args[@]}" || status=$?
# Datastore calls in DICOMweb mode (drafts, heatmaps, a final label stored as DICOM-SEG).
if [ "$status" -eq 0 ] && [ -f "$OUT/label.nrrd" ]; then
  "$AFLOC_PYTHON" "$ROOT/tests/browser/dicomweb_checks.py" "http://127.0.0.1:$PORT" \
    "http://127.0.0.1:$ORTHANC_PORT/dicom-web" "$STUDY" "$OUT/label.nrrd" "$OUT/dicomweb.json" || status=$?
fi
exit "$status"
