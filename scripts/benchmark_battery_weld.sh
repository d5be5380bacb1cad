#!/usr/bin/env bash
# Real-data check on a machine without internet: the battery-weld dataset (MVTec layout, gray images of
# varying height, same-name masks) with a genuinely ImageNet-pretrained MobileNetV2 teacher from a local file.
# Usage: scripts/benchmark_battery_weld.sh [SHARED_DIR] [OUT_DIR]   (SHARED_DIR defaults to ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared}
OUT=${2:-runs_battery_weld}
PY=${PY:-.venv/bin/python}
WEIGHTS="$SHARED/weights/mobilenet_v2_imagenet_dequant.pth"
[ -f "$WEIGHTS" ] || { echo "error: $WEIGHTS not found" >&2; exit 2; }
start=$(date +%s)
$PY train.py --category battery_weld --data-root "$SHARED/data" --backbone mobilenet_v2 \
  --teacher-weights "$WEIGHTS" --epochs "${EPOCHS:-100}" --batch-size 8 --output-dir "$OUT/runs"
$PY test.py --category battery_weld --runs-dir "$OUT/runs" --save-images
$PY predict.py --category battery_weld --runs-dir "$OUT/runs" --input "$SHARED/data/battery_weld/test" \
  --output "$OUT/predictions" --overwrite
echo "flagged at the calibrated thresholds (is_anomalous=True) per test folder:"
$PY - "$OUT/predictions/predictions.csv" <<'PYEOF'
import csv, sys, collections
counts = collections.Counter()
totals = collections.Counter()
for row in csv.DictReader(open(sys.argv[1])):
    folder = row["path"].split("/")[0]
    totals[folder] += 1
    counts[folder] += row["is_anomalous"] == "True"
for folder in sorted(totals):
    print(f"  {folder}: {counts[folder]} of {totals[folder]} flagged")
PYEOF
echo "wall time: $(( $(date +%s) - start )) s"
