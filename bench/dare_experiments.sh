#!/usr/bin/env bash
# DARE vs TWIN vs DIN(top-k) and the attention-width sweep on the CPU-sized generated long-timeline
# data (configs/data/dare_synthetic_small.yaml, L = 100). Sized for a shared 2-core CPU: one epoch,
# batch 256, official lr 0.01; seeds from $SEEDS (default "1"). Run dirs under runs/dare_exp/.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-1}
COMMON=(--quiet --set data.build=configs/data/dare_synthetic_small.yaml --set data.batch_size=256
        --set trainer.max_epochs=1 --set trainer.num_threads=2)
run() {  # name config seed extra-sets...
  local name=$1 cfg=$2 seed=$3; shift 3
  local out=runs/dare_exp/${name}_s${seed}
  [ -f "$out/metrics.json" ] && return 0
  recsys fit "$cfg" --seed "$seed" --output-dir "$out" "${COMMON[@]}" "$@" > "runs/dare_exp/${name}_s${seed}.log" 2>&1
  echo "done $name seed $seed"
}
mkdir -p runs/dare_exp
for seed in $SEEDS; do
  run dare configs/dare_synthetic.yaml "$seed"
  run twin configs/twin_synthetic.yaml "$seed"
  run dintopk configs/dare_dintopk_synthetic.yaml "$seed"
  for w in 8 4; do   # D_A = 1/2 and 1/4 of D_R (16 per field)
    run dare_da$w configs/dare_synthetic.yaml "$seed" --set model.init_args.attention_item_dim=$w \
      --set model.init_args.attention_category_dim=$w --set model.init_args.attention_position_dim=$w
  done
done
