#!/usr/bin/env bash
# Set up (or reuse) .venv/ and run the test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
echo "[test] running pytest"
exec "$ROOT/.venv/bin/python" -m pytest -q "$@" tests
