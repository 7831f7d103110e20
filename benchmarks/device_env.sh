# Sourced by benchmarks/device_training.sh and device_ml1m.sh: the repository root as the working
# directory, $ROOT, $OUT (default ./device_out, created), $PY, the working tree importable without
# installing anything, and nvidia-smi's report in $OUT.
export PYTHONUNBUFFERED=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/device_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
# export/ and runtime/ install as genattn_export and genattn_runtime (pyproject's package-dir):
# links under those names make the working tree importable as installed.
PKGS="$(mktemp -d)"
ln -s "$ROOT/export" "$PKGS/genattn_export"
ln -s "$ROOT/runtime" "$PKGS/genattn_runtime"
export PYTHONPATH="$ROOT:$PKGS${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/nvidia-smi.txt"
