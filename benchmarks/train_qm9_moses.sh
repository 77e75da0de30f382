#!/usr/bin/env bash
# The drug-like model: one DiScoFormer on QM9 and MOSES, each its own [DIST] (issue 43).
#
#   benchmarks/train_qm9_moses.sh start    # warm start from the bundled QM9 model (vocabularies mapped by type)
#   benchmarks/train_qm9_moses.sh resume   # continue RUN/checkpoint.pt bit for bit (same machine)
#   benchmarks/train_qm9_moses.sh save     # before a session ends: RUN/checkpoint.pt -> the committed copy
#   benchmarks/train_qm9_moses.sh carry    # a fresh machine: continue bit for bit from the committed copy
#   benchmarks/train_qm9_moses.sh resume --consistency-weight 0   # options after the verb go to molgen train
#   RUN=runs/qm9_moses_e2 benchmarks/train_qm9_moses.sh second   # a second epoch from the distilled checkpoint (full precision)
#   RUN=runs/qm9_moses_e2 benchmarks/train_qm9_moses.sh save|resume|carry   # ... and the same verbs for it
#
# The committed copy (benchmarks/checkpoints/<RUN's name>.pt) is the training checkpoint less its
# training-set hashes (recomputed from the data at start): weights, EMA, optimizer, step and RNG.
# On 2 CPU cores a MOSES epoch takes about 11 hours: the run checkpoints every 10 minutes and goes on
# across sessions. RUN defaults to runs/qm9_moses; DATA to ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/qm9_moses}
DATA=${DATA:-../shared/data}
CARRIED=benchmarks/checkpoints/$(basename "$RUN").pt
# The repository's virtual environment when there is one: a shell without it on PATH would otherwise
# find the molgen/ package folder, not the command (a nohup shell did: "molgen: Is a directory").
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OPTIONS=(qm9 "moses=$DATA/moses/train.csv.gz" --qm9-path "$DATA" --aromatic-bonds --kekule-features
         --max-atoms 32 --epochs 1 --batch-size 128 --bond-repair-share 0.15 --val-molecules 500
         --size-buckets 64 --checkpoint-minutes 10 --workers 2 -o "$RUN")
VERB=${1:-start}
shift || true
case "$VERB" in
  # The learning rate is given only where a run starts: resume and carry take the checkpoint's (an explicit
  # --lr would override it).
  start) exec "$PY" -m molgen train "${OPTIONS[@]}" --init-from molgen/weights/qm9.pt --lr 5e-4 "$@" ;;
  # The second epoch starts from the distilled head (a training checkpoint's head sat above its bound and
  # would pull the backbone with the consistency loss) at a lower peak learning rate than the first.
  second) exec "$PY" -m molgen train "${OPTIONS[@]}" --init-from benchmarks/checkpoints/qm9_moses_distilled.pt --lr 3e-4 "$@" ;;
  resume) exec "$PY" -m molgen train "${OPTIONS[@]}" --resume "$@" ;;
  save) "$PY" - "$RUN/checkpoint.pt" "$CARRIED" <<'PY'
import sys
from molgen.checkpoint import read_checkpoint, save_checkpoint
payload = read_checkpoint(sys.argv[1])
payload.pop("train_smiles_hashes", None)
save_checkpoint(payload, sys.argv[2])
PY
  ;;
  carry) mkdir -p "$RUN" && cp "$CARRIED" "$RUN/checkpoint.pt" && exec "$PY" -m molgen train "${OPTIONS[@]}" --resume "$@" ;;
  *) echo "usage: $0 start|second|resume|save|carry" >&2; exit 2 ;;
esac
