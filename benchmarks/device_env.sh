# Sourced by benchmarks/device_training.sh and device_ml1m.sh: the repository root as the working
# directory, $ROOT, $OUT (default ./device_out, created), $PY, the working tree importable without
# installing anything, and nvidia-smi's report in $OUT.
export PYTHONUNBUFFERED=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/device_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/nvidia-smi.txt"
