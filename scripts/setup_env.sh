#!/usr/bin/env bash
# Create or reuse .venv/ in the repo root with the pinned, CPU-only dependency set.
#
#   bash scripts/setup_env.sh [--corpus]
#
# --corpus also installs the built-in corpus, the Debian package trans-de-en 1.9-6 (apt-get, as
# root or through sudo): only scripts/demo.sh on the built-in corpus and prepare_builtin.sh read
# it; the WMT16 and IWSLT14 recipes and your own data need no root.
# Idempotent: a second run only checks that the install is complete.
set -euo pipefail
CORPUS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus) CORPUS=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.ensdist-installed"
CONSTRAINTS="$ROOT/requirements/constraints.txt"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
want="$(cat "$CONSTRAINTS" "$ROOT/setup.py" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[setup] .venv is up to date"
else
  echo "[setup] installing torch (CPU wheel) and the pinned dependencies"
  # pip's warnings about this machine's extra package folders are noise to a user; errors still show.
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  "$VENV/bin/python" -m pip install -q --upgrade pip 2> >(grep -v "^WARNING: Location" >&2)
  # torch first, pinned: pip must never pick a torch on its own (an unpinned torch is a CUDA build).
  "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" torch==2.13.0 2> >(grep -v "^WARNING: Location" >&2)
  "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -e "$ROOT[test]" 2> >(grep -v "^WARNING: Location\|BuildBackendWarning\|^ *!!\|^ *\*\*\*\|^ *$\|Please be careful\|name as your package\|with strategy" >&2)
  # fairseq declares torchaudio (speech tasks only); the release pip resolves for it cannot load
  # beside torch 2.13 (OSError at import). The translation path never needs it, so remove it.
  "$VENV/bin/python" -m pip uninstall -q -y torchaudio >/dev/null 2>&1 || true
  echo "$want" > "$STAMP"
fi

# The built-in corpus: the Ding German-English dictionary from Debian (pinned version), on request.
if [ "$CORPUS" = 1 ] && [ "$(dpkg-query -W -f='${Version}' trans-de-en 2>/dev/null)" != "1.9-6" ]; then
  echo "[setup] installing Debian package trans-de-en=1.9-6 (built-in corpus)"
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: the built-in corpus needs root: run 'apt-get install trans-de-en=1.9-6' as root, or use your own data (scripts/prepare_raw.sh, demo.sh --data)" >&2; exit 1; }
    SUDO=(sudo)
  fi
  ${SUDO[@]+"${SUDO[@]}"} apt-get update -qq
  ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq trans-de-en=1.9-6 >/dev/null
fi
