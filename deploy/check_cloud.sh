#!/usr/bin/env bash
# `make check-cloud`: prove the cloud role installs and runs with the `cloud` extra alone. A fresh venv gets
# `pip install -c constraints.txt '.[cloud]'` (as an operator would); mlflow, scikit-learn, skl2onnx, onnx,
# pandas, pyarrow and plotly must not be importable in it; then deploy/check_cloud.py, run by that venv's
# python, starts `edgeloop cloud` on SQLite and on PostgreSQL and checks /readyz, a bundle upload and rollout to
# simulated devices, `edgeloop devices`, /metrics and the dashboard.
#   usage: deploy/check_cloud.sh BUNDLE_DIR PUBLIC_KEY [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=$(realpath "$1"); public_key=$(realpath "$2"); python=${3:-python3.11}
repo=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== fresh venv with the cloud extra only"
mkdir -p "$tmp/src"
cp -r pyproject.toml README.md constraints.txt contracts edge_agent edgeloop trainer converter cloud_sync "$tmp/src/"
find "$tmp/src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip wheel
"$tmp/venv/bin/python" -m pip install -q -c constraints.txt "$tmp/src[cloud]"
"$tmp/venv/bin/python" - <<'PY'
import importlib.util
heavy = ("mlflow", "sklearn", "skl2onnx", "onnx", "pandas", "pyarrow", "plotly", "pyspark")
found = [name for name in heavy if importlib.util.find_spec(name)]
assert not found, f"the cloud extra pulled {found}"
print(f"   not importable: {', '.join(heavy)}")
PY
echo "   installed: $(du -sm "$tmp/venv" | cut -f1) MB (venv incl. pip)"

cd "$tmp"  # no edgeloop.toml from the checkout; the package comes from the venv, not the clone
"$tmp/venv/bin/python" "$repo/deploy/check_cloud.py" "$bundle" "$public_key"
echo "== check-cloud passed"
