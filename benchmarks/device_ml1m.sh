#!/usr/bin/env bash
# MovieLens-1M at convergence on a lent GPU: a queue of trainings, SLOTS of them at once (one card
# is mostly idle with one of these models), all stopped by one deadline and resumed by the next
# call from the run folders it hands back, so a run can span several calls. Run from the
# repository root.
#
#   here, once:   GENATTN_DATA=data genattn data fetch ml-1m      (the ignored data/ folder)
#                 (runs parked on CPU in benchmarks/results/accuracy_ml1m_inflight/ are picked up)
#   device run:   carry ["data", "runs/ml1m_gpu"], command "bash benchmarks/device_ml1m.sh",
#                 timeout_s 600 (BUDGET_S, default 530, is the trainings' share of it)
#   back here:    cat <files_at>/runs.tar.part* | tar -x -C runs/ml1m_gpu
#                 then, per configuration, copy the finished folders to runs/accuracy/ml-1m/ and
#                 python -m benchmarks.accuracy --data ml-1m --configs NAME=CONFIG --seeds S \
#                     --set model.max_len=200 [--set train.loss=bce]   (evaluates, trains nothing)
#
# What comes back in $OUT (the device returns at most 8 files, so the run folders travel as one
# tar split in 15 MiB parts): status.txt (per run: epochs, best validation NDCG@10, finished or
# not, test metrics), nvidia-smi.txt, logs.tar.gz, runs.tar.partNN. A finished run travels without
# its optimizer state (state.safetensors: only a resume reads it).
#
# The queue, in order: the VAE on the anchors' backbone with its target-aware path kept off the
# shared weights (posterior_ce = "generative") and its control, softmax with the recency bias (the
# one pair that differs on ML-1M at max_len 50, docs/results.md, "Why the VAE falls behind under full CE"); then the VAE on the anchors' backbone (benchmarks/configs/vae_anchor.toml: its
# ML-100K shape is too small for ML-1M), then the ML-100K search's selected VAE and diffusion, full CE (ours) then BCE
# (the paper's protocol); softmax in the anchors' setting (benchmarks/configs/softmax_anchor.toml:
# 64-dim, 2 blocks, lr 1e-3) and the search's; then seeds 1 and 2 of the full-CE runs; all at
# max_len 200 (the anchors' length), patience 20, epoch cap 200 (the configurations'). A seed
# benchmarks/results/accuracy_ml1m.json records is skipped; one parked there on CPU
# (accuracy_ml1m_inflight/) resumes from its parked copy.
# DEVICE / DATA / EPOCHS / SLOTS / BUDGET_S override for a dry run on CPU.
set -uo pipefail
# shellcheck source=benchmarks/device_env.sh
. "$(dirname "$0")/device_env.sh"
RUNS="${RUNS:-$ROOT/runs/ml1m_gpu}"
BUDGET_S="${BUDGET_S:-530}"
SLOTS="${SLOTS:-8}"
DEVICE="${DEVICE:-cuda}"
DATA="${DATA:-ml-1m}"
EPOCHS="${EPOCHS:-}"
export GENATTN_DATA="${GENATTN_DATA:-$ROOT/data}"
LOGS="$(mktemp -d)"
mkdir -p "$RUNS"
deadline=$((SECONDS + BUDGET_S))

SEL=benchmarks/results/search_ml100k_selected
ANCHOR=benchmarks/configs/softmax_anchor.toml
VAE_ANCHOR=benchmarks/configs/vae_anchor.toml
# name|config|seed|extra flags (genattn train's); the generative kinds first (softmax's seed 0 ran on an H200 already)
JOBS=(
  "vae_anchor_pgen_full_seed0|$VAE_ANCHOR|0|--set model.posterior_ce=generative"
  "softmax_anchor_rb_full_seed0|$ANCHOR|0|--set model.recency_bias=true"
  "vae_anchor_full_seed0|$VAE_ANCHOR|0|"
  "vae_anchor_bce_seed0|$VAE_ANCHOR|0|--loss bce"
  "vae_tuned_full_seed0|$SEL/vae.toml|0|"
  "diffusion_tuned_full_seed0|$SEL/diffusion.toml|0|"
  "vae_tuned_bce_seed0|$SEL/vae.toml|0|--loss bce"
  "diffusion_tuned_bce_seed0|$SEL/diffusion.toml|0|--loss bce"
  "softmax_anchor_full_seed0|$ANCHOR|0|"
  "softmax_tuned_full_seed0|$SEL/softmax.toml|0|"
  "softmax_anchor_bce_seed0|$ANCHOR|0|--loss bce"
  "softmax_tuned_bce_seed0|$SEL/softmax.toml|0|--loss bce"
)
for seed in 1 2; do
  JOBS+=("vae_tuned_full_seed$seed|$SEL/vae.toml|$seed|"
         "diffusion_tuned_full_seed$seed|$SEL/diffusion.toml|$seed|"
         "softmax_anchor_full_seed$seed|$ANCHOR|$seed|"
         "softmax_tuned_full_seed$seed|$SEL/softmax.toml|$seed|")
done

finished() {  # a run whose metrics hold the test split has ended (patience or cap)
  "$PY" -c "import json,sys; sys.exit(0 if 'test' in json.load(open(sys.argv[1])) else 1)" "$1/metrics.json" 2>/dev/null
}
recorded() {  # accuracy_ml1m.json holds the seed (<key>_seed<s>: a run finished and evaluated earlier)
  [ "$DATA" = ml-1m ] || return 1
  "$PY" - "$1" <<'PY' 2>/dev/null
import json, sys
key, seed = sys.argv[1].rsplit("_seed", 1)
entry = json.load(open("benchmarks/results/accuracy_ml1m.json")).get(key, {})
sys.exit(0 if seed in entry.get("per_seed", {}) else 1)
PY
}
PARKED=benchmarks/results/accuracy_ml1m_inflight  # runs parked on CPU (benchmarks.accuracy --park)

running=0
for job in "${JOBS[@]}"; do
  IFS='|' read -r name cfg seed extra <<< "$job"
  dir="$RUNS/$name"
  { finished "$dir" || recorded "$name"; } && continue
  [ ! -d "$dir" ] && [ -f "$PARKED/$name/state.json" ] && cp -r "$PARKED/$name" "$dir"
  if [ "$running" -ge "$SLOTS" ]; then
    wait -n
    running=$((running - 1))
  fi
  left=$((deadline - SECONDS))
  [ "$left" -lt 60 ] && break  # too little time to load the data and train an epoch
  resume=()
  [ -f "$dir/state.json" ] && resume=(--resume)
  # shellcheck disable=SC2086  # $extra holds flags
  timeout --signal=TERM "$left" "$PY" -m genattn.cli train -c "$cfg" --data "$DATA" --device "$DEVICE" \
      --max-len 200 --seed "$seed" --threads 2 --no-progress -o "$dir" ${EPOCHS:+--epochs $EPOCHS} $extra \
      "${resume[@]}" > "$LOGS/$name.log" 2>&1 &
  running=$((running + 1))
done
wait

: > "$OUT/status.txt"
for job in "${JOBS[@]}"; do
  IFS='|' read -r name _ <<< "$job"
  "$PY" - "$RUNS/$name" "$name" >> "$OUT/status.txt" <<'PY'
import json, sys
from pathlib import Path
d, name = Path(sys.argv[1]), sys.argv[2]
try:
    m = json.loads((d / "metrics.json").read_text())
except OSError:
    raise SystemExit  # not started
done = "test" in m
eps = sorted(m.get("events_per_s", []))
print(f"{name}: epoch {len(m.get('history', []))}, best valid NDCG@10 {m.get('best_valid_ndcg@10')} at "
      f"{m.get('best_epoch')}, {'finished (' + str(m.get('stopped_by')) + ')' if done else 'to resume'}, "
      f"median {eps[len(eps) // 2] if eps else 0:.0f} events/s"
      + (f", test HR@10 {m['test'].get('hr@10'):.4f} NDCG@10 {m['test'].get('ndcg@10'):.4f}" if done else ""))
PY
done
cat "$OUT/status.txt"

# The run folders, packed: finished ones without the optimizer state.
excludes=()
for dir in "$RUNS"/*/; do
  finished "$dir" && excludes+=(--exclude "./$(basename "$dir")/state.safetensors")
done
tar -C "$RUNS" "${excludes[@]}" -cf - . | split -b 15M -d - "$OUT/runs.tar.part"
tar -C "$LOGS" -czf "$OUT/logs.tar.gz" .
ls -l "$OUT"
echo "done: $OUT"
