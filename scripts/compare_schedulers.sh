#!/usr/bin/env bash
# ASHA against FIFO on the same 16 configurations (sampled with the same seed, in the same
# order) of a synthetic dataset: trial-epochs run, wall time and best validation loss.
#   scripts/compare_schedulers.sh [ROWS]        (default 50000 rows)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-50000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python scripts/make_data.py --rows "$rows" --parts 4 --out "$work/data" > /dev/null
for scheduler in asha fifo; do
    .venv/bin/python -m app tune --config configs/tune.yaml \
        --set name="compare-$scheduler" --set run.storage="$work/runs" \
        --set data.train="$work/data" --set data.label=target --set data.split="{valid: 0.1, test: 0.1}" \
        --set train.epochs=8 --set train.batch_size=512 \
        --set tune.search=random --set tune.num_samples=16 --set tune.max_concurrent_trials=2 \
        --set tune.scheduler="{name: $scheduler, grace_period: 1, reduction_factor: 2}" \
        --set tune.space="{train.lr: {loguniform: [1.0e-4, 3.0e-2]}, model.hidden: {choice: [[16], [64], [128, 64], [256, 128]]}}" \
        > "$work/$scheduler.log" 2>&1 || { tail -20 "$work/$scheduler.log"; exit 1; }
done
.venv/bin/python - "$work/runs" <<'PY'
import json, sys
print("| scheduler | trials | trial-epochs | wall time (s) | best valid_loss | best trial's test accuracy |")
print("|---|---:|---:|---:|---:|---:|")
for s in ("asha", "fifo"):
    m = json.load(open(f"{sys.argv[1]}/compare-{s}/metrics.json"))
    print(f"| {s} | {m['trials']} | {m['trial_epochs']} | {m['wall_time_s']:.0f} | "
          f"{m['valid']['valid_loss']:.4f} | {m['test']['accuracy']:.4f} |")
PY
