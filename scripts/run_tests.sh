#!/usr/bin/env bash
# Installs the environment and runs the whole test suite (slow tests included).
# Usage: bash scripts/run_tests.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/env.sh"
cd "$ROOT"
exec python -m pytest "$@"
