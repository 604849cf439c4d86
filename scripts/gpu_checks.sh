#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (each step time-limited, so one hang does not cost the others):
#   1. the CUDA-only tests (latency on torch-cuda, the latency table on CUDA, the loss under autocast);
#   2. the proxy evaluator's speed on the GPU (amc-bench bench=speed bench.device=cuda; issue 8's < 1 s per episode);
#   3. a demo search on CUDA (amc-search device=cuda);
#   4. the deployment report with the CUDA latency column (needs outputs/e2e from the README's end-to-end demo);
#   5. parallel episodes on many cores (amc-bench bench=parallel) when that bench exists.
# Usage: bash scripts/gpu_checks.sh [OUT_DIR]   (OUT_DIR default: outputs/gpu-checks; logs and JSON land there)
#        STEPS="tests report" bash scripts/gpu_checks.sh   runs only those steps; PARALLEL_WORKERS=1,4,8 the counts
# Wheels of packages the machine lacks may sit in .whl/ (installed into /tmp/site first, no network needed).
set -uo pipefail
OUT_DIR=${1:-${OUT:-outputs/gpu-checks}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
source scripts/offline_wheels.sh  # wheels from .whl/ when the machine lacks the dependencies
WORK=$(mktemp -d)
step() {  # step NAME SECONDS COMMAND...: run, log to OUT_DIR/NAME.log, record the exit status and wall time
  local name=$1 limit=$2; shift 2
  case " ${STEPS:-$name} " in *" $name "*) ;; *) return 0 ;; esac  # STEPS="tests report": only those steps
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc ${limit}s-limit wall=$((SECONDS - t0))s" | tee -a "$OUT_DIR/steps.txt"
  tail -n 25 "$OUT_DIR/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'onnxruntime', onnxruntime.__version__, 'cpus', __import__('os').cpu_count())" | tee -a "$OUT_DIR/gpu.txt"
python3 -m amc.data.synthetic "$WORK/warm" --n-train 2 --n-val 2 >/dev/null 2>&1  # imports warm, nothing else

step tests 100 python3 -m pytest -q -rs -p no:cacheprovider tests/test_latency.py tests/test_latency_table.py \
  tests/test_loss.py -k "cuda or CUDA"
step speed 130 python3 -m amc.cli.bench bench=speed bench.device=cuda "hydra.run.dir=$WORK/speed"
cp "$WORK/speed/results.json" "$OUT_DIR/speed.json" 2>/dev/null
step search 120 python3 -m amc.cli.search device=cuda "hydra.run.dir=$WORK/search"
cp "$WORK/search/results.json" "$OUT_DIR/search.json" 2>/dev/null
if [ -d outputs/e2e/search ]; then
  step report 100 python3 -m amc.cli.eval device=cuda report.pruned=outputs/e2e/search \
    report.finetuned_no_kd=outputs/e2e/finetune-plain report.finetuned=outputs/e2e/finetune-kd \
    report.int8=outputs/e2e/export latency.threads=2 latency.runs=50 "hydra.run.dir=$WORK/report"
  cp "$WORK/report/report.md" "$OUT_DIR/report.md" 2>/dev/null
  cp "$WORK/report/report.json" "$OUT_DIR/report.json" 2>/dev/null
fi
if [ -f amc/bench/parallel.py ] && [ -f conf/bench/parallel.yaml ]; then
  step parallel 300 python3 -m amc.cli.bench bench=parallel "bench.workers=[${PARALLEL_WORKERS:-1,2,4,8}]" \
    bench.episodes=32 bench.warmup=16 "hydra.run.dir=$WORK/parallel"
  cp "$WORK/parallel/results.json" "$OUT_DIR/parallel.json" 2>/dev/null
fi
cat "$OUT_DIR/steps.txt"
