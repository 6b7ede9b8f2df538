#!/usr/bin/env bash
# Real-data parity run: selfunet vs the reference nnU-Net v2 on the same folds and budget.
# Usage: bench/parity/run_parity.sh [OUT=/tmp/parity]
#   env: EPOCHS (1) ITERS (250) VAL_ITERS (50) FOLDS (3)
#        REFPY (the reference venv's python; default $SELFUNET_REFERENCE_PYTHON)
#        SOURCE (TotalSegmentator reference_files folder)
#        DOWNSAMPLE (1): coarser voxels for the dataset (build_dataset.py --downsample)
#        AMP (off): ours' --amp; the reference trains fp32 on a CPU, so fp32 is compared with fp32.
#          A bf16 row of ours goes into another OUT (it reuses nothing of the fp32 run).
# Ours and the reference train at the same time (same machine load for both), each side's folds in turn;
# both sides' out-of-fold predictions are then scored by `selfunet evaluate` against the
# same labels. Wall times go to OUT/timings.tsv, results to OUT/results.md.
set -euo pipefail
OUT=${1:-/tmp/parity}
EPOCHS=${EPOCHS:-1}; ITERS=${ITERS:-250}; VAL_ITERS=${VAL_ITERS:-50}; FOLDS=${FOLDS:-3}
REFPY=${REFPY:-${SELFUNET_REFERENCE_PYTHON:-/work/refvenv/bin/python}}; AMP=${AMP:-off}; REFBIN=$(dirname "$REFPY")
SOURCE=${SOURCE:-/tmp/ts/totalsegmentator-2.18.0/tests/reference_files}
HERE=$(cd "$(dirname "$0")" && pwd)
DS=Dataset501_TSCTSlabs; TR=nnUNetTrainer_Parity
export nnUNet_raw=$OUT/nnunet_raw nnUNet_preprocessed=$OUT/nnunet_pre nnUNet_results=$OUT/nnunet_results
mkdir -p "$OUT" "$nnUNet_preprocessed" "$nnUNet_results"
T="$OUT/timings.tsv"; [ -f "$T" ] || printf 'side\tstep\tseconds\tload_1min_start\tload_1min_end\n' > "$T"
load() { cut -d' ' -f1 /proc/loadavg; }
timed() {  # side step cmd...
  local side=$1 step=$2; shift 2; local l0 t0 rc=0; l0=$(load); t0=$(date +%s.%N)
  "$@" > "$OUT/log_${side}_${step}.txt" 2>&1 || rc=$?
  printf '%s\t%s\t%.1f\t%s\t%s\n' "$side" "$step$([ $rc = 0 ] || echo " FAILED rc=$rc")" \
    "$(echo "$(date +%s.%N) - $t0" | bc)" "$l0" "$(load)" >> "$T"
  return $rc
}

[ -f "$OUT/msd/dataset.json" ] || python "$HERE/build_dataset.py" --source "$SOURCE" --out "$OUT" --downsample "${DOWNSAMPLE:-1}"

# planning + preprocessing, both sides at once
[ -f "$OUT/ours/plan.json" ] || timed ours plan_preprocess bash -c \
  "selfunet fingerprint $OUT/msd --work $OUT/ours && selfunet plan $OUT/ours && selfunet preprocess $OUT/ours -c 3d_fullres" &
[ -f "$nnUNet_preprocessed/$DS/nnUNetPlans.json" ] || timed ref plan_preprocess \
  "$REFBIN/nnUNetv2_plan_and_preprocess" -d 501 -c 3d_fullres -np 2 --verify_dataset_integrity &
wait

# the same folds on both sides: selfunet's splits (seed 12345), copied to nnU-Net's splits_final.json
python - "$OUT" "$FOLDS" <<'PY'
import json, sys
from pathlib import Path
from selfunet.training.splits import make_splits, save_splits
out, k = Path(sys.argv[1]), int(sys.argv[2])
ids = sorted(p.name[: -len(".nii.gz")] for p in (out / "msd" / "labelsTr").glob("*.nii.gz"))
path = out / "ours" / "splits.json"
if not path.exists():
    save_splits(path, make_splits(ids, k))
(out / "nnunet_pre" / "Dataset501_TSCTSlabs" / "splits_final.json").write_text(path.read_text())
PY

# each side trains its folds one after the other; the two sides run at the same time, so both
# see the same machine load and neither waits for the other between folds
ours_chain() {
  for f in $(seq 0 $((FOLDS - 1))); do
    [ -f "$OUT/ours/train/3d_fullres/fold_$f/checkpoint_final.pt" ] || timed ours "train_fold$f" \
      selfunet train "$OUT/ours" -c 3d_fullres -f "$f" --epochs "$EPOCHS" --iterations-per-epoch "$ITERS" \
        --validation-iterations "$VAL_ITERS" --num-folds "$FOLDS" --predict-validation --amp "$AMP"
  done
}
ref_chain() {
  for f in $(seq 0 $((FOLDS - 1))); do
    [ -f "$nnUNet_results/$DS/${TR}__nnUNetPlans__3d_fullres/fold_$f/checkpoint_final.pth" ] || timed ref \
      "train_fold$f" "$REFPY" "$HERE/ref_train.py" 501 "$f" --epochs "$EPOCHS" --iterations "$ITERS" \
        --val-iterations "$VAL_ITERS"
  done
}
ours_chain &
ref_chain &
wait

# out-of-fold predictions of both sides into one folder each, scored by the same evaluator
for side in ours ref; do
  rm -rf "$OUT/oof_$side"; mkdir -p "$OUT/oof_$side"
  if [ $side = ours ]; then src="$OUT/ours/train/3d_fullres"; else src="$nnUNet_results/$DS/${TR}__nnUNetPlans__3d_fullres"; fi
  cp "$src"/fold_*/validation/*.nii.gz "$OUT/oof_$side/"
  selfunet evaluate "$OUT/oof_$side" "$OUT/msd/labelsTr" --dataset "$OUT/msd" -o "$OUT/eval_$side" > "$OUT/log_${side}_evaluate.txt" 2>&1
done
python "$HERE/report.py" "$OUT" --epochs "$EPOCHS" --iterations "$ITERS" --val-iterations "$VAL_ITERS" > "$OUT/results.md"
cat "$OUT/results.md"
