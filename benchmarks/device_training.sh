#!/usr/bin/env bash
# GPU training-throughput check for a lent GPU machine (CUDA PyTorch present, no network).
# Run from the repository root; writes into $OUT (default ./device_out):
#   training.json / .md / .png (benchmarks/training.py cells), training.log, ddp.log, nvidia-smi.txt
#
#   bash benchmarks/device_training.sh
#
# Sized for under 5 minutes on an H100: softmax over 10^3..10^6 items, full vs sampled
# (4,096 negatives), batch 1,024 windows of 50 (51,200 events a step; the card needs big
# batches to be busy); the generative kinds at 10^4 and 10^6 items with sampled softmax;
# each cell 4 s after warm-up. Then a 2-process NCCL run of the documented command is
# tried only when the machine has 2+ GPUs. Installs nothing: the working tree is on PYTHONPATH.
set -euo pipefail
# shellcheck source=benchmarks/device_env.sh
. "$(dirname "$0")/device_env.sh"

COMMON=(--device cuda --batches 1024 --negatives 4096 --seconds 4 --min-steps 5 --warmup 3)
timeout 170 "$PY" -m benchmarks.training "${COMMON[@]}" --kinds softmax --items 1e3,1e4,1e5,1e6 \
    --losses full,sampled --out "$OUT/softmax" 2>&1 | tee "$OUT/training.log" || echo "softmax sweep failed or timed out" | tee -a "$OUT/training.log"
timeout 100 "$PY" -m benchmarks.training "${COMMON[@]}" --kinds vae,diffusion --items 1e4,1e6 \
    --losses sampled --out "$OUT/generative" 2>&1 | tee -a "$OUT/training.log" || echo "generative sweep failed or timed out" | tee -a "$OUT/training.log"

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then
  timeout 120 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m genattn.cli train \
      --data synthetic --attention softmax --epochs 1 --device cuda --no-progress -o "$OUT/ddp_ck" \
      > "$OUT/ddp.log" 2>&1 || echo "NCCL run failed (see ddp.log)" >> "$OUT/ddp.log"
else
  echo "one GPU: the 2-process NCCL run needs 2 (the gloo run is tested on CPU in CI)" > "$OUT/ddp.log"
fi
echo "done: $OUT"
