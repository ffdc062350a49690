#!/usr/bin/env bash
# Set up (or reuse) .venv/ and run the test suite. Extra arguments go to pytest.
#   bash scripts/test.sh          everything (what CI runs)
#   bash scripts/test.sh --fast   the fast tier: math, formats, house rules (tests not marked slow)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" --corpus   # the demo pipeline test reads the built-in corpus
cd "$ROOT"
tier=()
if [ "${1:-}" = "--fast" ]; then
  shift
  tier=(-m "not slow")
fi
echo "[test] running pytest${tier[*]:+ (fast tier)}"
exec "$ROOT/.venv/bin/python" -m pytest -q ${tier[@]+"${tier[@]}"} "$@" tests
