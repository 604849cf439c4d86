#!/usr/bin/env bash
# Copy the finished cells of a bench=compare run directory into a results folder kept in git, so that a long bench
# survives the machine it runs on: every finished cell's record (cells/<budget>/<method>/seedN.json) and its
# search's episode log (gzipped), nothing else (checkpoints, models and TensorBoard events stay in the run dir).
# A later run continues the bench from the results folder: copy its cells/ into a new run directory and start the
# same bench there (bench.resume or scripts/compare_parallel.sh): cells whose fingerprint matches are read back.
#
# Usage: bash scripts/sync_cells.sh RUN_DIR RESULTS_DIR      (run it as often as you like: it only adds and updates)
set -euo pipefail
RUN_DIR=${1:?usage: bash scripts/sync_cells.sh RUN_DIR RESULTS_DIR}
DEST=${2:?usage: bash scripts/sync_cells.sh RUN_DIR RESULTS_DIR}
mkdir -p "$DEST" && DEST=$(cd "$DEST" && pwd)  # absolute: the copies are made from inside RUN_DIR
cd "$RUN_DIR"
n=0
for cell in cells/*/*/seed*.json; do
  [ -f "$cell" ] || continue
  mkdir -p "$DEST/$(dirname "$cell")"
  cp -p "$cell" "$DEST/$cell"
  log="${cell%.json}/search/episodes.jsonl"
  if [ -f "$log" ]; then
    mkdir -p "$DEST/$(dirname "$log")"
    gzip -9nc "$log" >"$DEST/$log.gz"
  fi
  n=$((n + 1))
done
for f in unpruned.json results.json results.md map_vs_flops.svg reward_curves.svg; do
  [ -f "$f" ] && cp -p "$f" "$DEST/$f"
done
echo "$n finished cells in $DEST"
