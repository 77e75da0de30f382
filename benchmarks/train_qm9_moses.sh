#!/usr/bin/env bash
# The drug-like model: one DiScoFormer on QM9 and MOSES, each its own [DIST] (issue 43).
#
#   benchmarks/train_qm9_moses.sh start    # warm start from the bundled QM9 model (vocabularies mapped by type)
#   benchmarks/train_qm9_moses.sh resume   # continue RUN/checkpoint.pt bit for bit (same machine)
#   benchmarks/train_qm9_moses.sh carry    # a fresh machine: continue from the committed slim checkpoint
#
# On 2 CPU cores a MOSES epoch takes about 11 hours: the run checkpoints every 10 minutes and goes on
# across sessions. RUN defaults to runs/qm9_moses; DATA to ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/qm9_moses}
DATA=${DATA:-../shared/data}
CARRIED=benchmarks/checkpoints/qm9_moses.pt
OPTIONS=(qm9 "moses=$DATA/moses/train.csv.gz" --qm9-path "$DATA" --aromatic-bonds --kekule-features
         --max-atoms 32 --epochs 1 --batch-size 128 --lr 5e-4 --bond-repair-share 0.15 --val-molecules 500
         --size-buckets 64 --checkpoint-minutes 10 --workers 2 -o "$RUN")
case "${1:-start}" in
  start) exec molgen train "${OPTIONS[@]}" --init-from molgen/weights/qm9.pt ;;
  resume) exec molgen train "${OPTIONS[@]}" --resume ;;
  carry) exec molgen train "${OPTIONS[@]}" --init-from "$CARRIED" ;;
  *) echo "usage: $0 start|resume|carry" >&2; exit 2 ;;
esac
