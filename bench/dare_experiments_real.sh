#!/usr/bin/env bash
# DARE vs TWIN vs DIN(top-k) on the real data under DARE's protocol: MovieLens 100K (L = 200,
# users with >= 210 ratings: 135 users) and Amazon Beauty (L = 50, users with >= 60 reviews: 94
# users). Both are tiny under this protocol, so 3 seeds, batch 256, up to 5 epochs with early
# stopping on validation AUC (patience 2), official lr 0.01, ONE thread per run and $JOBS runs at
# a time (default 2); EPOCHS / DATASETS override the cap and the datasets. Run dirs under runs/dare_exp_real/; finished runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-2}
EPOCHS=${EPOCHS:-5}
DATASETS=${DATASETS:-"ml100k amazon_beauty"}
OUT=${OUT:-runs/dare_exp_real}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 OUT
export COMMON="--quiet --set data.batch_size=256 --set trainer.max_epochs=$EPOCHS --set trainer.num_threads=1"
jobs() {
  for seed in $SEEDS; do
    for ds in $DATASETS; do
      for cfg in dare twin dare_dintopk; do echo "$cfg $ds $seed"; done
    done
  done
}
run_one() {
  local cfg=$1 ds=$2 seed=$3 out=$OUT/${1}_${2}_s${3}
  [ -f "$out/metrics.json" ] && return 0
  if recsys fit "configs/${cfg}_${ds}.yaml" --seed "$seed" --output-dir "$out" $COMMON > "$out.log" 2>&1; then
    echo "$(date -u +%H:%M:%S) done $cfg $ds seed $seed"
  else
    echo "$(date -u +%H:%M:%S) FAILED $cfg $ds seed $seed (see $out.log)"
  fi
}
export -f run_one
jobs | xargs -P "$JOBS" -L 1 bash -c 'run_one "$@"' _
