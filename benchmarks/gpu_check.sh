#!/usr/bin/env bash
# The GPU checks of issue 13, in one pass on a machine with a CUDA GPU:
#   1. the CUDA tests (tests/test_cuda.py: training, checkpoints and encoding on the GPU against the CPU);
#   2. training speed on the GPU (benchmarks/train_speed.py --device cuda): ML-100K and the Baby shape in
#      both training modes, then 200,000 (paper-exact) and 1,000,000 (batch-local) generated items; the first
#      pass (2026-12-04) gave 1,000,000 items 120 s, too little to generate them and build their kNN graphs;
#   3. data-parallel launch on the GPU: `torchrun ... -m ui.cli train --device cuda` (nccl), a few epochs;
#   4. beside step 2's large catalogs, one full-rule ML-100K run on the GPU (benchmarks/recommend.py
#      --device cuda), to set against the CPU runs of the same seed.
# Usage: bash benchmarks/gpu_check.sh [MMREC_FOLDER] [OUT_FOLDER]   (each step has its own time limit and the
# full-rule run stops at 520 s: about 9 minutes in all; give the call 600 s).
# Writes OUT_FOLDER/{log.txt,scale.json,recommend_gpu.json}.
# Through the device tool the copy's .git may be older than the tree sent: its records then carry that
# commit with '+dirty' (benchmarks/provenance.py), so note the commit sent beside the results.
set -u
DATA=${1:-../shared/data/movielens100k-posters/mmrec}
OUT=${2:-${OUT:-gpu_check_out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
start=$SECONDS
step() { echo "== $((SECONDS - start)) s: $*"; }
{
step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, faiss, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'gpu', torch.cuda.is_available(), 'faiss', faiss.__version__, 'faiss gpus', getattr(faiss, 'get_num_gpus', lambda: 0)(), \
'open_clip', open_clip.__version__)"

step "CUDA tests"
timeout 120 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_faiss_gpu.py

step "training speed on the GPU: ML-100K and the Baby shape"
timeout 120 $PY benchmarks/train_speed.py --device cuda --scenarios ml100k baby --modes paper-exact batch-local \
  --epochs 4 --data "$DATA"

step "full-rule ML-100K run on the GPU, in the background"
timeout $((520 - (SECONDS - start))) $PY benchmarks/recommend.py --device cuda --data "$DATA" --setting full --models dgmrec --seeds 0 \
  --out "$OUT/recommend_gpu.json" > "$OUT/recommend_gpu.log" 2>&1 &
full_rule=$!

step "data-parallel launch on the GPU (torchrun, nccl, 1 process)"
timeout 45 $PY -m torch.distributed.run --nproc_per_node 1 -m ui.cli train --mmrec "$DATA" --epochs 3 --eval-every 3 --gen-refit-steps 0 --device cuda \
  --out /tmp/gpu_check_run 2>&1 | tail -n 8

step "training speed on the GPU: 200,000 and 1,000,000 items (kNN graphs by FAISS on the CPU)"
timeout 100 $PY benchmarks/train_speed.py --device cuda --scenarios items200k --modes paper-exact --batches 5
timeout 200 $PY benchmarks/train_speed.py --device cuda --scenarios items1m --modes batch-local --batches 5

step "waiting for the full-rule run"
wait $full_rule; echo "full-rule run exit $?"
tail -n 4 "$OUT/recommend_gpu.log"
cp benchmarks/results/scale.json "$OUT/scale.json"
step "done"
} 2>&1 | tee "$OUT/log.txt"
