#!/usr/bin/env bash
# GPU check, one prepared run (under 10 minutes on one GPU): the training step against a plain fp32 eager step
# (fp32 and AMP bf16), then `medgen fit mri-liver --preset gpu` briefly on phantoms and the pipeline on its model.
# Needs a Python with a CUDA torch (PYTHON, default python3); installs medgen without dependencies.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-${OUT:-/tmp/medgen_gpu_check}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MEDGEN_PROGRESS=0
$PY -m pip install -q --no-deps -e . 2>/dev/null || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
echo "== training step"
$PY benchmarks/gpu_step.py --batch 32 --size 160 --steps 20 | tee "$OUT/step.txt"
echo "== fit (gpu preset, shortened) on phantoms"
$PY -m medgen phantoms "$OUT/phantoms" --cases 8 --test 2
for amp in none bf16; do
    start=$(date +%s)
    $PY -m medgen fit mri-liver --ct "$OUT/phantoms/ct" --ct-labels "$OUT/phantoms/labels" --label-map 1:1 \
        --mri "$OUT/phantoms/mri" --out "$OUT/model_$amp" --preset gpu --set amp=$amp \
        --set segmenter.train.iterations=300 --set segmenter.preprocess.spacing=null \
        --set "segmenter.data.patch_size=[128, 128]"
    echo "fit amp=$amp: $(( $(date +%s) - start )) s (300 iterations)" | tee -a "$OUT/fit.txt"
    grep ",train,loss," "$OUT/model_$amp/segmenter/metrics.csv" | tail -1
done
echo "== pipeline"
start=$(date +%s)
$PY -m medgen pipeline mri-liver --model "$OUT/model_bf16" "$OUT/phantoms/mri" "$OUT/masks" --truth "$OUT/phantoms/labels"
echo "pipeline: $(( $(date +%s) - start )) s" | tee -a "$OUT/fit.txt"
