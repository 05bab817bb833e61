#!/bin/bash
# CI check of the Binder configuration (too slow for the unit suite): a fresh venv,
# `pip install -r binder/requirements.txt` from the repository root as repo2docker does,
# postBuild, then examples/iris.ipynb executed with papermill through binder/start.
# Usage (from anywhere): binder/check.sh [python]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
"${python}" -m venv "${work}/venv"
# shellcheck disable=SC1091
source "${work}/venv/bin/activate"
cd "${repo}"
pip install --quiet --upgrade pip
pip install --quiet -r binder/requirements.txt
pip install --quiet papermill ipykernel
export HOME="${work}/home"
mkdir -p "${HOME}"
bash binder/postBuild
binder/start python -m papermill --cwd "${work}" examples/iris.ipynb "${work}/iris-out.ipynb"
test -s "${HOME}/.pai-lab/store/workspaces/default/models/scratch/model.joblib"
echo "binder check passed"
