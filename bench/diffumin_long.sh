#!/usr/bin/env bash
# DiffuMIN vs DIN vs DARE on generated long planted-interest timelines (issue 12): the paper's claim is
# that modelling several interests explicitly helps most on long, multi-interest histories.
#   L = 200:   configs/data/dare_synthetic.yaml (2 929 users, 167k training samples)
#   L = 1 000: configs/data/dare_synthetic_long.yaml (longer users, the same generator and protocol)
# Core fields only for every model. As bench/dare_experiments.sh: two epochs, validation every half
# epoch (the best selects the checkpoint), batch 256, ONE thread per run, $JOBS runs at a time
# (default 1). Run dirs under runs/diffumin_long/L<L>/<name>_s<seed>; a finished run is skipped, so
# the script resumes. Tables: python bench/dare_results.py --runs runs/diffumin_long/L200 (and L1000).
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"1 2 3"}
LENGTHS=${LENGTHS:-"200 1000"}
JOBS=${JOBS:-1}
OUT=${OUT:-runs/diffumin_long}
export OMP_NUM_THREADS=1 OUT
COMMON="--quiet --set data.batch_size=256 --set trainer.max_epochs=2 --set trainer.val_check_interval=0.5 --set trainer.num_threads=1"
data_of() { [ "$1" = 200 ] && echo configs/data/dare_synthetic.yaml || echo configs/data/dare_synthetic_long.yaml; }
jobs() {   # name config seed L, one job a line, in priority order
  for L in $LENGTHS; do
    for s in $SEEDS; do
      echo "diffumin configs/diffumin_synthetic.yaml $s $L"
      echo "din configs/din_synthetic.yaml $s $L"
      echo "dare configs/dare_synthetic.yaml $s $L"
    done
  done
}
run_one() {
  local name=$1 cfg=$2 seed=$3 L=$4
  local out=$OUT/L$L/${name}_s${seed}
  [ -f "$out/metrics.json" ] && return 0
  mkdir -p "$OUT/L$L"
  if recsys fit "$cfg" --seed "$seed" --output-dir "$out" --set data.build="$(data_of "$L")" $COMMON \
      > "$OUT/L$L/${name}_s${seed}.log" 2>&1; then
    echo "$(date -u +%H:%M:%S) done $name seed $seed L $L"
  else
    echo "$(date -u +%H:%M:%S) FAILED $name seed $seed L $L (see $OUT/L$L/${name}_s${seed}.log)"
  fi
}
export -f run_one data_of; export COMMON
jobs | xargs -P "$JOBS" -L 1 bash -c 'run_one "$@"' _
