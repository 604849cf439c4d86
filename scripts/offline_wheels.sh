# Sourced by the device scripts (gpu_checks.sh, gpu_compare_seeds.sh, compare_parallel.sh), from the repository root.
# A machine without package registries may lack amc's dependencies: their wheels may sit in .whl/ (git-ignored).
# Unless ${PYTHON:-python3} already imports them, install those wheels into /tmp/site and put it on PYTHONPATH.
if ! "${PYTHON:-python3}" -c "import hydra, gymnasium, stable_baselines3, pycocotools, torch_pruning, submitit" \
    2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
