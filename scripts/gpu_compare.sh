#!/usr/bin/env bash
# bench=compare on a CUDA GPU at the harsh budgets (30% and 50% FLOPs), with the recovery proxy
# (evaluator.proxy.recover_steps=30: 30 distillation steps per episode before scoring; bench=fidelity measured its
# rank correlation with fine-tuned mAP at 0.92 / 0.89 where the plain proxy has 0.51 / 0.60). The cells run as
# parallel processes on the one GPU (scripts/compare_parallel.sh). The machine this was written for lends 10
# minutes per command, so a short pilot search first times an episode and the episode count is cut to what fits
# (at most EPISODES; ddpg and random search always get the same count, written to OUT_DIR/episodes.txt). Processes
# still running at TIMEOUT are stopped with their finished cells kept: run scripts/compare_parallel.sh again on the
# same run dir with the same overrides (as compare.log says) to finish them.
# Usage: bash scripts/gpu_compare.sh [OUT_DIR [OVERRIDE ...]]   (default outputs/gpu-compare; overrides go to amc-bench)
#   SEEDS=3 EPISODES=120 SEARCH_SECONDS=300 BUDGETS="0.3 0.5" THREADS=2 TIMEOUT=440 DEVICE=cuda
set -uo pipefail
OUT_DIR=${1:-${OUT:-outputs/gpu-compare}}
shift || true
SEEDS=${SEEDS:-3}
EPISODES=${EPISODES:-120}
SEARCH_SECONDS=${SEARCH_SECONDS:-300}   # wall seconds one process may spend on its two searches
DEVICE=${DEVICE:-cuda}
export BUDGETS=${BUDGETS:-0.3 0.5} SEEDS THREADS=${THREADS:-2}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
source scripts/offline_wheels.sh  # wheels from .whl/ when the machine lacks the dependencies
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$OUT_DIR/gpu.txt"
PROXY="'device=$DEVICE','device.threads=$THREADS','evaluator.proxy.val_images=200','evaluator.proxy.bn_batches=4','evaluator.proxy.recover_steps=30'"
DDPG="'agent=ddpg-demo','agent.warmup_around_budget=true','agent.sigma_decay=0.98'"
WORK=$(mktemp -d)
# pilot: 8 episodes of the real search on the GPU, alone; the episode time sets the episode count
t0=$(date +%s.%N)
python3 -m amc.cli.search device=$DEVICE evaluator.proxy.val_images=200 evaluator.proxy.bn_batches=4 \
  evaluator.proxy.recover_steps=30 episodes=8 budget.flops=0.5 final.latency_runs=0 final.export_model=false \
  progress=false "hydra.run.dir=$WORK/pilot" >"$OUT_DIR/pilot.log" 2>&1 || { tail -n 20 "$OUT_DIR/pilot.log"; exit 1; }
pilot_s=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
median=$(python3 -c "import json; e=sorted(json.loads(l)['seconds'] for l in open('$WORK/pilot/episodes.jsonl')); \
print(round(e[len(e) // 2], 3))")
# the processes share the GPU and the cores: assume each episode takes twice the pilot's median (the H100 run:
# 1.9 s alone, 3.3 s with six processes); each process plays two searches
episodes=$(python3 -c "print(max(20, min($EPISODES, int($SEARCH_SECONDS / (2 * 2 * $median)))))")
echo "pilot: 8 episodes in ${pilot_s}s (with start-up), median episode ${median}s; episodes per search: $episodes" | tee "$OUT_DIR/episodes.txt"
TIMEOUT=${TIMEOUT:-440} bash scripts/compare_parallel.sh "$WORK/compare" "bench.episodes=$episodes" \
  "bench.search.overrides=[$PROXY]" "bench.search.agents.ddpg=[$DDPG]" bench.finetune.train_images=1000 "$@" \
  >"$OUT_DIR/compare.log" 2>&1
tail -n 60 "$OUT_DIR/compare.log"
mkdir -p "$OUT_DIR/compare"
(cd "$WORK/compare" && find . \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.svg' -o -name '*.log' \
  -o -name 'best_policy.yaml' \) -not -path '*/model/*' -print0 | tar --null -cf - -T - | tar -xf - -C "$OUT_DIR/compare")
