#!/usr/bin/env bash
# CUDA check for a lent GPU machine (no internet; under 5 minutes): the engine, ensemble and perturbation tests on
# cpu and cuda (the triton engine compiled on cuda, interpreted on cpu), then the quick CUDA benchmark
# (speed in fp32 and TF32, K networks at once, nn4n-train iteration, an iteration on the 20 tasks of task=yang19).
# Prints everything; exits non-zero if either part fails. Runs this checkout's nn4n, installed or not.
#   bash scripts/gpu_check.sh            # uses python3 (the one holding a CUDA torch)
#   PYTHON=path/to/venv/bin/python bash scripts/gpu_check.sh
#   NN4N_WHEELS=DIR bash scripts/gpu_check.sh   # offline: first installs DIR's wheels (scripts/offline_wheels.sh)
set -uo pipefail
WHEELS=""
if [ -n "${NN4N_WHEELS:-}" ]; then  # resolved before the cd below, so a relative DIR works
    WHEELS=$(cd "$NN4N_WHEELS" 2>/dev/null && pwd) || { echo "gpu_check.sh: NN4N_WHEELS=$NN4N_WHEELS is not a folder" >&2; exit 2; }
fi
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
ln -s "$PWD/configs" "$SITE/nn4n_configs"  # the package names pyproject.toml gives these folders
ln -s "$PWD/tasks" "$SITE/nn4n_tasks"
if [ -n "$WHEELS" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl || exit 1
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'EOF' || exit 1
import torch, nn4n.recurrence
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
print("engines:", ", ".join(nn4n.recurrence.installed_engines()))
assert torch.cuda.is_available(), "no CUDA device"
EOF

status=0
echo "== pytest engines, ensembles and perturbations (cpu + cuda)"
timeout 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_engines.py tests/test_ensemble.py tests/test_perturb.py -k "not nn4n_train" || status=1
echo "== scripts/bench.py --device cuda --quick"
timeout 150 "$PY" scripts/bench.py --device cuda --quick || status=1
exit $status
