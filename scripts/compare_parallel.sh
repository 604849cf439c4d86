#!/usr/bin/env bash
# amc-bench bench=compare with its cells spread over processes: one process per (budget, seed), all writing their
# own cells into one run directory, then one more bench over that directory (bench.resume) reads every cell back
# and writes the table, results.json and the plots, exactly as a single `amc-bench bench=compare` would have.
# Use it when a machine has cores (or a GPU) to spare: the cells are independent.
#
# Usage: bash scripts/compare_parallel.sh RUN_DIR [OVERRIDE ...]
#   BUDGETS="0.3 0.5" SEEDS=2 THREADS=1   budgets, seeds FIRST_SEED..SEEDS-1, torch threads per process (defaults
#                                         shown; they replace the bench config's own budgets and seeds)
#   FIRST_SEED=0                          the first seed run here (e.g. 6: seeds 6..SEEDS-1, the others done elsewhere)
#   METHOD_GROUPS=""                      "" = each (budget, seed) in one process; else one process per group and
#                                         (budget, seed), e.g. "ddpg random uniform,global_magnitude": the two
#                                         searches side by side (a machine with more cores than (budget, seed)s)
#   TABLE=1                               0: skip the closing table (the seeds before FIRST_SEED are not here)
#   BENCH=compare                         the bench config (conf/bench/)
#   JOBS=0                                processes at once (0 = every process at once); seed-major order, so
#                                         an interrupted run has whole seeds finished first
#   TIMEOUT=0                             seconds each process may run (0 = no limit); finished cells are kept
#   PYTHON=python3                        the interpreter amc is installed in (e.g. .venv/bin/python)
#   OVERRIDE: any amc-bench override, given to every process, e.g. bench.episodes=120
#             "bench.search.overrides=['device=cuda']" (quote list items that hold '=')
# Wheels of packages the machine lacks may sit in .whl/ (installed into /tmp/site first, no network needed).
set -uo pipefail
RUN_DIR=${1:?usage: bash scripts/compare_parallel.sh RUN_DIR [OVERRIDE ...]}
shift
BUDGETS=${BUDGETS:-0.3 0.5}
SEEDS=${SEEDS:-2}
THREADS=${THREADS:-1}
BENCH=${BENCH:-compare}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=$THREADS
source scripts/offline_wheels.sh  # wheels from .whl/ when the machine lacks the dependencies
mkdir -p "$RUN_DIR/logs"
# the demo data is made on first use: make it once here, not in every process at the same time
"$PYTHON" -c "from amc.data.datasets import load_dataset as d; [d('demo', None, s) for s in ('val', 'train', 'search')]" \
  || exit 1
JOBS=${JOBS:-0}
pids=()
read -ra groups <<<"${METHOD_GROUPS:-}"
[ "${#groups[@]}" -gt 0 ] || groups=("")
for ((seed = ${FIRST_SEED:-0}; seed < SEEDS; seed++)); do
  for budget in $BUDGETS; do
    for group in "${groups[@]}"; do
      if [ "$JOBS" -gt 0 ]; then  # wait for a free slot
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
      fi
      name=$budget-seed$seed${group:+-${group//,/+}}
      timeout "${TIMEOUT:-0}" "$PYTHON" -m amc.cli.bench "bench=$BENCH" "bench.budgets=[$budget]" bench.seeds=1 "seed=$seed" \
        ${group:+"bench.methods=[$group]"} "bench.resume=$RUN_DIR" bench.search.progress=false \
        "hydra.run.dir=$RUN_DIR/logs/$name" "$@" >"$RUN_DIR/logs/$name.log" 2>&1 &
      pids+=($!)
    done
  done
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
if [ "$failed" -ne 0 ]; then  # the finished cells are kept: the same command again continues the others
  echo "$failed of ${#pids[@]} processes failed or ran out of time (logs in $RUN_DIR/logs); run the same command again to continue" >&2
  exit 1
fi
[ "${TABLE:-1}" = 1 ] || exit 0
list=$(echo "$BUDGETS" | tr ' ' ',')
"$PYTHON" -m amc.cli.bench "bench=$BENCH" "bench.budgets=[$list]" "bench.seeds=$SEEDS" seed=0 "bench.resume=$RUN_DIR" \
  "hydra.run.dir=$RUN_DIR/logs/table" "$@" 2>&1 | tee "$RUN_DIR/logs/table.log"
