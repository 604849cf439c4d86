#!/usr/bin/env bash
# Some seeds of the default bench=compare (the headline's: no search or agent overrides) on a CUDA machine, while
# the other seeds run elsewhere (a CPU). A FLOPs budget's cells do not depend on where they ran (their fingerprint
# leaves the device out; each cell records its machine), so the seeds of one bench may come from two machines;
# every method of one seed runs on the same machine, which keeps the comparison paired.
# One process per (budget, seed, method group): the two searches of a seed side by side, the two baselines in a
# third (scripts/compare_parallel.sh, METHOD_GROUPS). Processes still running at TIMEOUT are stopped with their
# finished cells and the searches' checkpoints kept; the run dir is packed into OUT_DIR/state.tgz, which this
# script continues from (STATE=that file) and which the bench's run dir on the other machine takes in
# (tar -xzf state.tgz -C RUN_DIR; then bench.resume=RUN_DIR reads the cells back).
# Usage: FIRST_SEED=6 SEEDS=8 TIMEOUT=480 [STATE=path/state.tgz] bash scripts/gpu_compare_seeds.sh [OUT_DIR [OVERRIDE ...]]
#   BUDGETS="0.5 0.3" THREADS=1 DEVICE=cuda   (defaults shown; AMC_CACHE_DIR may hold the demo dataset already)
#   METHOD_GROUPS="ddpg random uniform,global_magnitude"   the processes of one (budget, seed), e.g. "ddpg" alone
#   SEARCH_OVERRIDES=""   more search overrides for every cell beside the device, comma-separated (spend_budget=true)
set -uo pipefail
OUT_DIR=${1:-${OUT:-outputs/gpu-compare-seeds}}
shift || true
mkdir -p "$OUT_DIR"
RUN=$(mktemp -d)
if [ -n "${STATE:-}" ]; then tar -xzf "$STATE" -C "$RUN" || exit 1; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$OUT_DIR/gpu.txt"
items="'device=${DEVICE:-cuda}'"  # Hydra list items holding '=' are quoted
IFS=, read -ra extra <<<"${SEARCH_OVERRIDES:-}"
for item in "${extra[@]}"; do items+=",'$item'"; done
t0=$SECONDS
BUDGETS=${BUDGETS:-0.5 0.3} FIRST_SEED=${FIRST_SEED:?FIRST_SEED} SEEDS=${SEEDS:?SEEDS} THREADS=${THREADS:-1} TABLE=0 \
  METHOD_GROUPS=${METHOD_GROUPS:-ddpg random uniform,global_magnitude} TIMEOUT=${TIMEOUT:-480} \
  PYTHON=${PYTHON:-python3} bash scripts/compare_parallel.sh "$RUN" \
  "bench.search.overrides=[$items]" "$@"
echo "processes done after $((SECONDS - t0)) s"
(cd "$RUN" && tar -czf "$OUT_DIR/state.tgz" --exclude='*/model' cells logs)
# where each search stands and which cells finished
for log in "$RUN"/cells/*/*/seed*/search/episodes.jsonl; do
  [ -f "$log" ] && echo "${log#"$RUN"/cells/}: $(wc -l <"$log") episodes"
done
find "$RUN/cells" -maxdepth 3 -name 'seed*.json' | sed "s|$RUN/cells/|finished: |" | sort
tail -n 3 "$RUN"/logs/*.log
