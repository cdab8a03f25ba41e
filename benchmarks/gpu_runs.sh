#!/usr/bin/env bash
# Several full-rule runs of benchmarks/recommend.py at once on one GPU, each in its own process, under one
# deadline; whatever finished is packed into OUT/runs.tar.gz (records, logs, curves). For a session lent a
# GPU for a few minutes: a run on the GPU is launch-bound (about 5 % of its time on the GPU itself,
# RESULTS.md section 2c), so several processes share one GPU with little loss.
# Usage: bash benchmarks/gpu_runs.sh OUT DEADLINE_S "RUN ARGS" ["RUN ARGS" ...]
#   RUN ARGS: recommend.py options of one run, e.g. "--dataset sample-shop --setting full --models dgmrec-paper --seeds 0"
# Each run gets --device cuda --threads 2; a run still going at DEADLINE_S seconds is stopped and leaves
# only its log. Merge the records here with `python benchmarks/recommend.py --merge ...`.
# Through the device tool the copy's .git may be older than the tree sent: the records then carry that commit
# with '+dirty' (benchmarks/provenance.py), so note the commit sent beside the results.
set -u
OUT=$1; DEADLINE=$2; shift 2
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
start=$SECONDS
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
i=0; pids=()
for run in "$@"; do
  # shellcheck disable=SC2086  # RUN ARGS are options, split on purpose
  timeout "$DEADLINE" $PY benchmarks/recommend.py $run --device cuda --threads 2 --out "$WORK/run$i.json" \
    > "$WORK/run$i.log" 2>&1 &
  pids+=($!); echo "run$i: $run"; i=$((i + 1))
done
for j in "${!pids[@]}"; do
  wait "${pids[$j]}"; rc=$?
  echo "== $((SECONDS - start)) s: run$j exit $rc"; tail -n 2 "$WORK/run$j.log"
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
} 2>&1 | tee "$OUT/log.txt"
tar -czf "$OUT/runs.tar.gz" -C "$WORK" .
