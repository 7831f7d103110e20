#!/usr/bin/env bash
# MovieLens-1M at convergence on a lent GPU: several trainings at once (one card is mostly idle with
# one of these models), each capped per call and resumed by the next, so the runs span calls and
# sessions. Run from the repository root; writes into $OUT (default ./device_out):
#   status.txt (per run: epoch, best validation NDCG@10, finished or not), nvidia-smi.txt,
#   <run>.log, and runs/<run>/ (the run folders: carry them back with the next call)
#
#   genattn data fetch ml-1m   (here, once: GENATTN_DATA=data puts it in the ignored data/ folder)
#   device run: carry ["data", "runs/ml1m_gpu"], command "bash benchmarks/device_ml1m.sh"
#   back here: copy $OUT/runs/* to runs/ml1m_gpu/, then per configuration
#     python -m benchmarks.accuracy --data ml-1m --runs runs/ml1m_gpu_eval ...   (see docs/model.md)
#
# The runs: the ML-100K search's selected configuration of every kind at max_len 200 (the anchors'
# length), full CE, plus softmax and the VAE under BCE (the paper's protocol), and softmax in the
# anchors' own setting (benchmarks/configs/softmax_anchor.toml: 64-dim, 2 blocks, lr 1e-3).
# Patience 20, epoch cap 200 (the configurations'). MINUTES (default 8) caps each call: a run cut mid-epoch resumes from
# its last finished epoch. DEVICE / DATA / EPOCHS override for a dry run on CPU.
set -uo pipefail
# shellcheck source=benchmarks/device_env.sh
. "$(dirname "$0")/device_env.sh"
RUNS="${RUNS:-$ROOT/runs/ml1m_gpu}"
MINUTES="${MINUTES:-8}"
DEVICE="${DEVICE:-cuda}"
DATA="${DATA:-ml-1m}"
EPOCHS="${EPOCHS:-}"
export GENATTN_DATA="${GENATTN_DATA:-$ROOT/data}"
mkdir -p "$OUT/runs" "$RUNS"

SEL=benchmarks/results/search_ml100k_selected
# name|config|extra flags
JOBS=(
  "softmax_anchor_full_seed0|benchmarks/configs/softmax_anchor.toml|"
  "softmax_tuned_full_seed0|$SEL/softmax.toml|"
  "vae_tuned_full_seed0|$SEL/vae.toml|"
  "diffusion_tuned_full_seed0|$SEL/diffusion.toml|"
  "softmax_tuned_bce_seed0|$SEL/softmax.toml|--loss bce"
  "vae_tuned_bce_seed0|$SEL/vae.toml|--loss bce"
)

finished() {  # a run whose metrics hold the test split has ended (patience or cap)
  "$PY" -c "import json,sys; sys.exit(0 if 'test' in json.load(open(sys.argv[1])) else 1)" "$1/metrics.json" 2>/dev/null
}

for job in "${JOBS[@]}"; do
  IFS='|' read -r name cfg extra <<< "$job"
  dir="$RUNS/$name"
  if finished "$dir"; then
    continue
  fi
  resume=()
  [ -f "$dir/state.json" ] && resume=(--resume)
  # shellcheck disable=SC2086  # $extra holds flags
  timeout --signal=TERM "${MINUTES}m" "$PY" -m genattn.cli train -c "$cfg" --data "$DATA" --device "$DEVICE" \
      --max-len 200 --seed 0 --threads 2 --no-progress -o "$dir" ${EPOCHS:+--epochs $EPOCHS} $extra "${resume[@]}" \
      > "$OUT/$name.log" 2>&1 &
done
wait

: > "$OUT/status.txt"
for job in "${JOBS[@]}"; do
  IFS='|' read -r name cfg extra <<< "$job"
  dir="$RUNS/$name"
  [ -d "$dir" ] && cp -r "$dir" "$OUT/runs/"
  "$PY" - "$dir" "$name" >> "$OUT/status.txt" <<'PY'
import json, sys
from pathlib import Path
d, name = Path(sys.argv[1]), sys.argv[2]
try:
    m = json.loads((d / "metrics.json").read_text())
except OSError:
    print(f"{name}: no checkpoint yet")
    raise SystemExit
done = "test" in m
print(f"{name}: epoch {len(m.get('history', []))}, best valid NDCG@10 {m.get('best_valid_ndcg@10')} at "
      f"{m.get('best_epoch')}, {'finished (' + str(m.get('stopped_by')) + ')' if done else 'to resume'}"
      + (f", test HR@10 {m['test'].get('hr@10'):.4f} NDCG@10 {m['test'].get('ndcg@10'):.4f}" if done else ""))
PY
done
cat "$OUT/status.txt"
echo "done: $OUT"
