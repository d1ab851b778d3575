#!/usr/bin/env bash
# Padded vs circular λ grid for CBCT H at toy size (smoke data, 24³, v30):
# held-out error of the fit, then partition-H trained 300 steps with each H, PSNR on the test volume.
# Needs the smoke run's preprocessed volumes (make smoke). Outputs in $OUT (default /tmp/gridcmp).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH
D=results/data/cbct; O=${OUT:-/tmp/gridcmp}; mkdir -p "$O"
CFG=$(python - <<'PY'
import json, unroll3d.config as c
cfg = c.load_config("config/smoke.yaml"); cfg["train"]["steps"] = 300
print(c.dumps(c.job_config(cfg, "cbct")))
PY
)
for g in padded circular; do
  unroll3d fit-normal --input $D/walnut1.pt --setting v30 --out $O/$g.pt --steps 300 --lr-schedule cosine --grid $g --threads 2 --device cpu --no-progress > $O/fit_$g.log 2>&1
  tail -1 $O/$g.csv
  unroll3d train --task cbct --setting v30 --variant partition-H --normal $O/$g.pt --config-json "$CFG" --train $D/walnut1.pt $D/walnut2.pt $D/walnut3.pt --val $D/walnut4.pt --out $O/model_$g.pt --threads 2 --device cpu --no-progress > $O/train_$g.log 2>&1
  unroll3d evaluate --task cbct --setting v30 --variant partition-H --normal $O/$g.pt --config-json "$CFG" --model $O/model_$g.pt --sample $D/walnut5.pt --out $O/eval_$g.json --threads 2 --device cpu > $O/eval_$g.log 2>&1
  python -c "import json; d=json.load(open('$O/eval_$g.json')); print('$g', 'PSNR', d['psnr'], 'SSIM', d['ssim'])"
done
