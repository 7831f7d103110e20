#!/usr/bin/env bash
# GPU latency check for a lent GPU machine (H100 / H200: CUDA PyTorch, numpy, onnx,
# onnxruntime CPU and matplotlib present; no network, no onnxruntime-gpu, no TensorRT).
# Run from the repository root; writes everything into $OUT (default ./device_out):
#   latency.json, latency.md, PNG plots, latency.log, nvidia-smi.txt
#
#   bash benchmarks/device_check.sh
#
# Installs nothing: the three import packages are put on PYTHONPATH from the working
# tree (genattn_runtime and genattn_export live in runtime/ and export/, so they are
# linked under their import names). Backends that cannot run (ORT CUDA / TensorRT EP
# without onnxruntime-gpu, native TensorRT without tensorrt) are skipped by the suite
# with the reason in the results. The suite keeps a 380 s budget (gpu.toml) inside
# `timeout 450`; it writes partial results after every model, so a timeout still
# leaves a usable latency.json.
set -euo pipefail
export PYTHONUNBUFFERED=1

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/device_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

{ nvidia-smi; echo; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit \
    --format=csv; } > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (no NVIDIA driver?)" >> "$OUT/nvidia-smi.txt"

# Import names -> working-tree folders, without installing anything.
SHIM="$(mktemp -d)"
ln -s "$ROOT/runtime" "$SHIM/genattn_runtime"
ln -s "$ROOT/export" "$SHIM/genattn_export"
export PYTHONPATH="$SHIM:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# What this machine has; a missing piece is reported and the part that needs it skipped.
{ "$PY" - <<'EOF' 2>&1 | tee "$OUT/latency.log"
import importlib.util
for mod in ("torch", "numpy", "safetensors", "onnx", "onnxscript", "onnxruntime", "matplotlib",
            "pandas", "tensorrt", "fastapi", "uvicorn", "httpx"):
    print(f"{mod:12s} {'present' if importlib.util.find_spec(mod) else 'MISSING'}")
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, ort.get_available_providers())
except ImportError:
    pass
EOF
} || true

if ! "$PY" -c "import torch, numpy, safetensors; assert torch.cuda.is_available()" >> "$OUT/latency.log" 2>&1; then
    echo "torch with CUDA, numpy and safetensors are needed for the GPU latency suite; nothing run" | tee -a "$OUT/latency.log"
    exit 0
fi

rc=0
timeout 450 "$PY" -m benchmarks.latency --config benchmarks/configs/gpu.toml --out "$OUT" \
    --cache /tmp/genattn_latency_cache "$@" 2>&1 | tee -a "$OUT/latency.log" || rc=$?
echo "benchmarks.latency exit status: $rc" | tee -a "$OUT/latency.log"
if [ -f "$OUT/latency.md" ]; then
    sed -n '/^## Targets/,/^## What is timed/p' "$OUT/latency.md"
fi
ls -la "$OUT"
exit "$rc"
