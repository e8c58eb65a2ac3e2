#!/usr/bin/env bash
# One GPU session's checks, run once on a lent GPU machine (figures: benchmarks/RESULTS.md, "GPU").
#
# That machine has PyTorch with CUDA but not the project's other dependencies and no network:
# wheels travel in .dev/whl (pip download --python-version 3.12 ... of monai, nibabel, SimpleITK,
# opensimplex, mlxtend, pytorch-ignite, xlrd, fire) and .dev/nilearn holds only the three MNI152
# files the synthetic cohort reads. Results go to $OUT (default /tmp/device_out).
#
#   bash benchmarks/device_run.sh [quality-scale] [quality-folds] [quality-minutes]
set -uo pipefail
OUT=${OUT:-/tmp/device_out}
SCALE=${1:-2}
FOLDS=${2:-3}
MINUTES=${3:-4}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .dev/whl/*.whl
cp -r .dev/nilearn /tmp/site/
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'cpus', __import__('os').cpu_count())"
} 2>&1 | tee "$OUT/device.txt"

timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -20 | tee "$OUT/cuda_tests.txt"

for args in "--max-batch 50,100,200" "--dtype bf16 --channels-last --max-batch 100,200"; do
  echo "== bench_inferer --device cuda --network paper $args"
  timeout 90 python3 benchmarks/bench_inferer.py --device cuda --network paper $args --repeats 3 2>&1
done | tee "$OUT/inferer.txt"

timeout $((MINUTES * 60 + 150)) python3 benchmarks/bench_quality.py --device cuda --scale "$SCALE" \
  --folds "$FOLDS" --max-minutes "$MINUTES" --workers 16 --out /tmp/bq 2>&1 | tee "$OUT/quality.txt"
cp /tmp/bq/table.md /tmp/bq/timings.json /tmp/bq/ablation/ablation.csv /tmp/bq/ablation/ensemble.json "$OUT/" 2>/dev/null
exit 0
