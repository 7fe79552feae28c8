#!/usr/bin/env bash
# Every GPU check of the project in one call, for a session that is lent a GPU (about 10 minutes
# on one H200). Writes JSON records under ${OUT:-runs/gpu} and prints a summary.
#   1. the fused local-loss kernels against the chunked path on the GPU (float32 and bfloat16);
#   2. the model step at the published working shape (batch 128, BERT-base shape, 97 tokens, bf16):
#      fused vs chunked vs the published way, side by side in one run, at 224 px and at the
#      published 299 px working resolution;
#   3. training end to end from radiograph-sized JPEGs (loader alone vs trainer, 200 steps).
# Usage: bash benchmarks/gpu_checks.sh   (from the repository root, project venv or scripts/env.sh)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/runs/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -m pytest tests/test_fused_local_loss.py -q -p no:cacheprovider -k cuda 2>&1 | tail -5 | tee "$OUT/fused-tests.txt"
timeout 240 python benchmarks/train_step.py --device cuda --local-impls fused,chunked --steps 5 \
  > "$OUT/train-step-224.json" 2> "$OUT/train-step-224.log"
timeout 200 python benchmarks/train_step.py --device cuda --local-impls fused,chunked --steps 5 --working-size 299 \
  > "$OUT/train-step-299.json" 2> "$OUT/train-step-299.log"
timeout 300 python benchmarks/train_throughput.py --work /tmp/afloc-tp --n 5000 --size 2000 --unique 200 \
  --workers "$(nproc)" --batch 128 --steps 200 --device cuda > "$OUT/train-throughput.json" 2> "$OUT/train-throughput.log"
for f in "$OUT"/*.json; do echo "== $f"; python -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({k: v for k, v in d.items() if k not in ('shape',)}, indent=1)[:3000])" "$f" || tail -5 "${f%.json}.log"; done
