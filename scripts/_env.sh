# Shared by scripts/run and scripts/test: a project virtualenv with Billfold installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv in .venv"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
install_billfold() {  # $1: pip extras spec, e.g. "" or "[dev]"
  local stamp="$VENV/.installed$1"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "==> installing billfold$1"
    "$VENV/bin/python" -m pip install --quiet -e ".$1"
    touch "$stamp"
  fi
}
