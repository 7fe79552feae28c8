#!/usr/bin/env bash
# Issue 13's GPU recipe in one call: publication-sized models trained from scratch on phantoms for a
# few minutes on one GPU, each scored in-domain and on the external sets by benchmarks/quality.py.
#
#   WORK=/tmp/afloc-gpu OUT=runs/gpu-recipe MINUTES=10 N_TRAIN=16000 \
#     bash benchmarks/gpu_recipe.sh benchmarks/configs/gpu-r50.yaml [more.yaml ...]
#
# 1. Training phantoms: N_TRAIN studies (seed 1, the recipe's style and share of real radiographs,
#    backgrounds from BACKGROUNDS, default ../shared/data/cxr-notes when present); the in-domain test
#    set (N_TEST plain phantoms, default 200, seed 2).
# 2. External sets under WORK/external: the synthetic one is written here (seed 7) when missing; the
#    real one (lesions inserted into real radiographs) is used when already there (EXTERNAL_REAL, a
#    folder written by `python -m afloc_models.evaluation.external`, is linked in) and skipped if not.
# 3. Every config trains at the same time on the same GPU for MINUTES (its cosine schedule ends at
#    that deadline), then is scored (maps mirror averaged, as served). Quote the figures with the
#    number of runs that shared the GPU: each run had that share of it.
# Records: OUT/quality-NAME.json and OUT/log-NAME.txt per config, OUT/gpu-util.csv (GPU load every
# 10 s), OUT/setup.txt.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-/tmp/afloc-gpu}"
OUT="${OUT:-$ROOT/runs/gpu-recipe}"
MINUTES="${MINUTES:-10}"
N_TRAIN="${N_TRAIN:-16000}"
N_TEST="${N_TEST:-200}"
BOOTSTRAP="${BOOTSTRAP:-100}"
BACKGROUNDS="${BACKGROUNDS:-auto}"
PY="${PYTHON:-python3}"
if [ "$#" -eq 0 ]; then
  echo "usage: bash benchmarks/gpu_recipe.sh CONFIG.yaml [CONFIG.yaml ...] (see the header)" >&2
  exit 2
fi
configs=()
names=()  # one run per config, named after its file: run-NAME, quality-NAME.json, log-NAME.txt
for config in "$@"; do
  [ -f "$config" ] || { echo "gpu_recipe: config '$config' does not exist" >&2; exit 2; }
  configs+=("$(cd "$(dirname "$config")" && pwd)/$(basename "$config")")  # absolute: the script cds to ROOT
  name="$(basename "${config%.*}")"
  for seen in "${names[@]}"; do
    [ "$seen" != "$name" ] || { echo "gpu_recipe: two configs are named '$name'; their runs would share files" >&2; exit 2; }
  done
  names+=("$name")
done
mkdir -p "$WORK" "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$ROOT"
started=$(date +%s)
stamp() { echo "[gpu_recipe] $(( $(date +%s) - started )) s: $*" | tee -a "$OUT/setup.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$OUT/setup.txt" 2>&1
external=""
if [ ! -f "$WORK/external/synthetic/ground_truth/findings.csv" ]; then
  # One process; it runs beside the phantoms.
  stamp "writing the synthetic external set"
  "$PY" -m afloc_models.evaluation.external --out "$WORK/external" --n 200 --seed 7 --no-real \
    > "$WORK/external.log" 2>&1 &
  external=$!
fi
stamp "writing $N_TRAIN training phantoms and the in-domain test set ($(nproc) processes)"
"$PY" -m afloc_training.phantoms --out "$WORK/train" --n "$N_TRAIN" --seed 1 --workers "$(nproc)" \
  --backgrounds "$BACKGROUNDS" --overwrite > "$WORK/phantoms.log" 2>&1 || { tail -5 "$WORK/phantoms.log"; exit 1; }
"$PY" -m afloc_training.phantoms --out "$WORK/test" --n "$N_TEST" --seed 2 --style plain --real-fraction 0 \
  --workers "$(nproc)" --overwrite >> "$WORK/phantoms.log" 2>&1 || { tail -5 "$WORK/phantoms.log"; exit 1; }
grep -h "^wrote" "$WORK/phantoms.log" | tee -a "$OUT/setup.txt"
if [ -n "$external" ]; then
  wait "$external" || { tail -5 "$WORK/external.log"; exit 1; }
  stamp "external set written"
fi
if [ -n "${EXTERNAL_REAL:-}" ] && [ ! -e "$WORK/external/real" ]; then
  ln -s "$(cd "$EXTERNAL_REAL" && pwd)" "$WORK/external/real"
fi
# Digests of what another machine can compare: the training reports, and the synthetic set's images
# and masks (its DICOM files carry fresh UIDs on every write).
digest() { (cd "$1" && find . -type f \( -name "$2" -o -name '*.csv' \) | sort | xargs sha256sum | sha256sum | cut -c1-16); }
echo "training reports digest: $(digest "$WORK/train" '*.txt')" | tee -a "$OUT/setup.txt"
echo "synthetic external set digest (png, csv): $(digest "$WORK/external/synthetic" '*.png')" | tee -a "$OUT/setup.txt"

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$OUT/gpu-util.csv" 2>/dev/null &
monitor=$!
stamp "training ${#configs[@]} config(s) at once for $MINUTES minutes each"
pids=()
for i in "${!configs[@]}"; do
  config="${configs[$i]}" name="${names[$i]}"
  run="$WORK/run-$name"
  mkdir -p "$run"
  ln -sfn "$WORK/train" "$run/train"
  ln -sfn "$WORK/test" "$run/test"
  "$PY" benchmarks/quality.py --work "$run" --config "$config" --n-train "$N_TRAIN" --n-test "$N_TEST" --minutes "$MINUTES" \
    --ablations none --similarities dot --bootstrap "$BOOTSTRAP" --external "$WORK/external" \
    > "$OUT/quality-$name.json" 2> "$OUT/log-$name.txt" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
kill "$monitor" 2>/dev/null
stamp "done (exit $status)"
for name in "${names[@]}"; do
  "$PY" - "$OUT/quality-$name.json" "$name" <<'EOF' || tail -3 "$OUT/log-$name.txt"
import json, sys
d = json.load(open(sys.argv[1]))
m = d["main"]
t = m["train"]
cols = {"in_domain": m["metrics"][m["similarity"]]["overall"], **{k: v["overall"] for k, v in m["external"].items()}}
print(sys.argv[2], f"steps {t['steps']} ({t['images_per_second']} img/s, val loss {t['val_loss']})",
      " | ".join(f"{k} {v['pointing_game']:.2f}/{v['cnr']:.2f}" for k, v in cols.items()))
EOF
done
exit $status
