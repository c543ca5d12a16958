#!/bin/bash
# DESMIL against ComiRec-SA under a planted interest shift (issue 13; bench/desmil_shift.py reads the runs):
# generate the coupled log with its shifted test split and the unshifted control log (same test users),
# build both, train every arm for each seed (one torch thread each, JOBS runs at a time), then tabulate.
#   bash bench/desmil_shift.sh                  # SEEDS="0 1 2" JOBS=2
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
ARMS="comirec_sa_shift comirec_sa_shift_control desmil_shift desmil_shift_lambda_p0.1"
GEN="--rows 100000 --items 3000 --categories 40 --mean-events 25"
recsys data generate runs/data/desmil_shift_raw/events.csv $GEN --interest-coupling 0.7 \
  --shift-split runs/data/desmil_shift_raw/user_split.parquet
recsys data generate runs/data/desmil_shift_control_raw/events.csv $GEN --interest-coupling 0
recsys data build configs/data/desmil_shift.yaml
recsys data build configs/data/desmil_shift_control.yaml
for seed in $SEEDS; do for arm in $ARMS; do echo "$arm $seed"; done; done |
  xargs -P "$JOBS" -L 1 sh -c '[ -f runs/retrieval/$0_seed$1/metrics.json ] || recsys fit configs/$0.yaml \
    --seed $1 --set trainer.num_threads=1 --set name=$0_seed$1 --output-dir runs/retrieval/$0_seed$1 --quiet \
    > runs/retrieval/$0_seed$1.log 2>&1'
runs=()
for seed in $SEEDS; do for arm in $ARMS; do runs+=(runs/retrieval/${arm}_seed$seed); done; done
python bench/desmil_shift.py --runs "${runs[@]}" --update-docs
