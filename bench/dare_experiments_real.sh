#!/usr/bin/env bash
# DARE vs TWIN vs DIN(top-k) on the real data under DARE's protocol: MovieLens 100K (L = 200,
# users with >= 210 ratings: 45 users) and Amazon Beauty (L = 50, users with >= 60 reviews: 94 users).
# Both are tiny under this protocol, so 3 seeds, batch 256, up to 5 epochs with early stopping on
# validation AUC (patience 2), official lr 0.01. Run dirs under runs/dare_exp_real/.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"1 2 3"}
COMMON=(--quiet --set data.batch_size=256 --set trainer.max_epochs=5 --set trainer.num_threads=2)
mkdir -p runs/dare_exp_real
for ds in ml100k amazon_beauty; do
  for seed in $SEEDS; do
    for cfg in dare twin dare_dintopk; do
      out=runs/dare_exp_real/${cfg}_${ds}_s${seed}
      [ -f "$out/metrics.json" ] && continue
      recsys fit "configs/${cfg}_${ds}.yaml" --seed "$seed" --output-dir "$out" "${COMMON[@]}" > "$out.log" 2>&1
      echo "done $cfg $ds seed $seed"
    done
  done
done
