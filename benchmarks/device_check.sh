#!/usr/bin/env bash
# The prepared GPU check (one run, < 5 min on an H100): the runtime's ONNX Runtime CUDA backend
# with its defaults (a CUDA graph per padded batch bucket 1/8/64/256) against torch CUDA graphs
# on the same card, batch 1 and 256, softmax / vae / diffusion, fp32 and fp16; beside them the
# same backend without CUDA graphs, backend="auto" (its CPU route) and ONNX Runtime CPU
# (benchmarks/configs/gpu_check.toml). Run from the repository root on a GPU machine:
#
#   bash benchmarks/device_check.sh            # extra arguments go to benchmarks.latency
#
# onnxruntime-gpu (the GPU machines have none and no package registry): on the CPU machine,
# split the onnxruntime-gpu 1.31.1 (CUDA 13) wheel's files into parts .ortgpu1 .. .ortgpuN small
# enough to carry; carry parts 1..N-1 in back-to-back calls that move them into /tmp/ortgpu,
# then the last part with this script:
#   carry [".ortgpuN"], command: mkdir -p /tmp/ortgpu && mv .ortgpuN/* /tmp/ortgpu/ && bash benchmarks/device_check.sh
# The script unpacks /tmp/ortgpu/part* into /tmp/ortsite (ORTGPU_PARTS / ORTGPU_SITE override
# them) and puts it first on PYTHONPATH, with the CUDA libraries of the torch install on
# LD_LIBRARY_PATH. Without it the ort-* backends are skipped with the reason in the results.
#
# Results: benchmarks/results/<machine>/gpu_check/ (latency.json, latency.md, PNG plots,
# latency.log, nvidia-smi.txt), <machine> = gpu-<GPU model>; copied to $OUT/<machine>/gpu_check
# when $OUT is set (a device run brings $OUT back: copy it into benchmarks/results/ and commit).
# The suite keeps a 180 s budget inside `timeout 240` and writes partial results after every
# model, so a timeout still leaves a usable latency.json.
set -euo pipefail
export PYTHONUNBUFFERED=1

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"

# Import names -> working-tree folders, without installing anything.
SHIM="$(mktemp -d)"
ln -s "$ROOT/runtime" "$SHIM/genattn_runtime"
ln -s "$ROOT/export" "$SHIM/genattn_export"
export PYTHONPATH="$SHIM:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# onnxruntime-gpu from the carried parts (see above).
PARTS="${ORTGPU_PARTS:-/tmp/ortgpu}"
SITE="${ORTGPU_SITE:-/tmp/ortsite}"
ORT_NOTE="onnxruntime-gpu: none (no $SITE/onnxruntime, no $PARTS/part*); the ort-* backends are skipped"
if [ ! -d "$SITE/onnxruntime" ] && compgen -G "$PARTS/part*" > /dev/null; then
    mkdir -p "$SITE"
    cat "$PARTS"/part* | xz -T0 -d | tar -x -C "$SITE"
fi
if [ -d "$SITE/onnxruntime" ]; then
    export PYTHONPATH="$SITE:$PYTHONPATH"
    NV="$("$PY" -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)"
    if [ -n "$NV" ]; then
        export LD_LIBRARY_PATH="$(find "$NV" -maxdepth 2 -name lib -type d | tr '\n' ':')${LD_LIBRARY_PATH:-}"
    fi
    ORT_NOTE="onnxruntime-gpu: unpacked in $SITE"
fi

MACHINE="$("$PY" -c 'from benchmarks.latency import machine_slug; from benchmarks.machine import machine_info
from genattn_runtime.backends import physical_cores
print(machine_slug(machine_info(), physical_cores()))')"
REL="benchmarks/results/$MACHINE/gpu_check"   # repository-relative: it is recorded in the results
mkdir -p "$REL"
LOG="$REL/latency.log"
echo "$ORT_NOTE" | tee "$LOG"

{ nvidia-smi; echo; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit \
    --format=csv; } > "$REL/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (no NVIDIA driver?)" >> "$REL/nvidia-smi.txt"

# What this machine has; a missing piece is reported and the part that needs it skipped.
{ "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.util
for mod in ("torch", "numpy", "safetensors", "onnx", "onnxscript", "onnxruntime", "matplotlib", "tensorrt"):
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

if ! "$PY" -c "import torch, numpy, safetensors; assert torch.cuda.is_available()" >> "$LOG" 2>&1; then
    echo "torch with CUDA, numpy and safetensors are needed for the GPU check; nothing run" | tee -a "$LOG"
    exit 0
fi

# The CUDA-only tests (torch serving path on the GPU equals CPU); a failure is reported, the run goes on.
timeout 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py -k cuda 2>&1 | tail -5 | tee -a "$LOG" || true

rc=0
timeout 240 "$PY" -m benchmarks.latency --config benchmarks/configs/gpu_check.toml --out "$REL" "$@" \
    2>&1 | tee -a "$LOG" || rc=$?
echo "benchmarks.latency exit status: $rc" | tee -a "$LOG"
if [ -f "$REL/latency.md" ]; then
    sed -n '/^## Targets/,/^## What is timed/p' "$REL/latency.md"
fi
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/$MACHINE"
    cp -r "$REL" "$OUT/$MACHINE/"
    ls -la "$OUT/$MACHINE/gpu_check"
fi
exit "$rc"
