#!/usr/bin/env bash
# Wheels for running nn4n on a machine that has PyTorch and the SciPy stack but no internet (a cluster's
# GPU node, say): the rest of nn4n's dependencies, at the versions installed where this runs, for the
# node's Python. Then, on the node, `NN4N_WHEELS=DIR bash scripts/gpu_check.sh` installs them first.
#   bash scripts/offline_wheels.sh DIR [PYTHON_VERSION]        # PYTHON_VERSION of the node, default 3.12
#   PYTHON=path/to/venv/bin/python bash scripts/offline_wheels.sh DIR 3.12
set -euo pipefail
DIR=${1:?usage: offline_wheels.sh DIR [PYTHON_VERSION]}
PYVER=${2:-3.12}
PY=${PYTHON:-python3}
PACKAGES="hydra-core omegaconf antlr4-python3-runtime neurogym gymnasium farama-notifications loguru natsort
pydantic-settings pydantic pydantic-core typing-inspection annotated-types python-dotenv tomlkit scikit-learn joblib threadpoolctl"

mkdir -p "$DIR"
for name in $PACKAGES; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") \
        || { echo "offline_wheels.sh: $name is not installed for $PY; install nn4n there first" >&2; exit 1; }
    # a wheel for the node's Python if PyPI has one, else one built here, which must be pure Python
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$DIR" "$name==$version" \
        2>/dev/null && continue
    "$PY" -m pip wheel -q --no-deps -w "$DIR" "$name==$version"
    ls "$DIR" | grep -qi "^${name//-/_}-$version-.*-none-any\.whl$" \
        || { echo "offline_wheels.sh: no wheel of $name $version for Python $PYVER" >&2; exit 1; }
done
ls "$DIR"
