# Shared helpers for the bash recipes (sourced, not run).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Prefer the repo's virtual environment; fall back to whatever is on PATH (a user's own env).
if [ -x "$ROOT/.venv/bin/python" ]; then
  PYTHON="$ROOT/.venv/bin/python"; BIN="$ROOT/.venv/bin/"
else
  PYTHON="$(command -v python3)"; BIN=""
fi
PLUGIN_DIR="$ROOT/ensdist_fairseq"
# fairseq-train as the recipes run it: the venv's console script, or through a launcher for
# several machines, e.g. LAUNCHER="torchrun --nnodes 2 --nproc_per_node 8 ..." (docs/teachers.md).
if [ -n "${LAUNCHER:-}" ]; then read -r -a FAIRSEQ_TRAIN <<< "$LAUNCHER -m fairseq_cli.train"
else FAIRSEQ_TRAIN=("${BIN}fairseq-train"); fi

die() { echo "error: $*" >&2; exit 1; }

load_config() {  # load_config FILE: source a configs/*.sh file, with a clear error if missing
  [ -n "${1:-}" ] || die "--config: no config file given"
  [ -f "$1" ] || die "--config $1: no such config file (see configs/)"
  # shellcheck disable=SC1090
  source "$1"
}
