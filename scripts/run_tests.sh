#!/usr/bin/env bash
# Installs everything the tests need and runs the whole suite (slow tests included).
# Usage: bash scripts/run_tests.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/env.sh"
# Orthanc, Chromium and playwright-core for the OHIF browser test (needs root to install).
if [ "$(id -u)" -eq 0 ] || [ -n "${CI:-}" ]; then
  bash "$ROOT/scripts/install_system_deps.sh"
else
  echo "[run_tests] not root: system packages not installed; the OHIF browser test may skip" >&2
fi
cd "$ROOT"
exec python -m pytest "$@"
