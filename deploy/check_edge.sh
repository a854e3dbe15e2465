#!/usr/bin/env bash
# `make check-edge`: prove the device install works with the base package only, using the SAME steps as
# Dockerfile.edge (copy the sources, `pip install --upgrade pip wheel`, `pip install -c constraints.txt .`),
# then start `edgeloop agent --bundle BUNDLE` on a free port, curl /readyz and one prediction, and stop it;
# then, when TEST_PYTHON is given (the dev venv's), the tests marked `device` with every agent a process of
# this base venv (EDGELOOP_DEVICE_PYTHON, tests/device_helpers.py).
#   usage: deploy/check_edge.sh BUNDLE_DIR PUBLIC_KEY [PYTHON [TEST_PYTHON]]
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=$(realpath "$1"); public_key=$(realpath "$2"); python=${3:-python3.11}; test_python=${4:-}
repo=$(pwd)
tmp=$(mktemp -d); pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

echo "== fresh venv with the base install only (same steps as Dockerfile.edge)"
mkdir -p "$tmp/src"
cp -r pyproject.toml README.md constraints.txt contracts edge_agent edgeloop trainer converter cloud_sync "$tmp/src/"
find "$tmp/src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip wheel
"$tmp/venv/bin/python" -m pip install -q -c constraints.txt "$tmp/src"
"$tmp/venv/bin/python" - <<'PY'
import importlib.util
heavy = [name for name in ("mlflow", "sklearn", "skl2onnx", "onnx", "pandas", "httpx") if importlib.util.find_spec(name)]
assert not heavy, f"the base install pulled {heavy}"
PY
site=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
tools=$(du -smc "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* "$site"/pkg_resources \
    "$site"/_distutils_hack "$site"/wheel "$site"/wheel-* 2>/dev/null | tail -1 | cut -f1)
echo "   installed: $(du -sm "$tmp/venv" | cut -f1) MB (venv incl. pip), of which pip/setuptools/wheel ${tools} MB"

echo "== edgeloop agent --bundle $bundle"
port=$("$tmp/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cd "$tmp"  # no edgeloop.toml from the checkout
EDGELOOP_HOME="$tmp/home" "$tmp/venv/bin/edgeloop" agent --bundle "$bundle" --state-dir "$tmp/state" \
    --port "$port" --token check-edge --public-key "$public_key" &
pid=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "error: the agent exited"; exit 1; }
    sleep 0.1
done
echo "   readyz:  $(curl -fsS "http://127.0.0.1:$port/readyz")"
record=$("$tmp/venv/bin/python" -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['golden_samples'][0]['inputs']))" "$bundle/manifest.json")
echo "   predict: $(curl -fsS -H 'Authorization: Bearer check-edge' -H 'Content-Type: application/json' \
    -d "$record" "http://127.0.0.1:$port/v1/predict")"
docs=$(curl -fsS -o /dev/null -w '%{http_code}, %{size_download} bytes' --compressed \
    "http://127.0.0.1:$port/docs/assets/swagger-ui-bundle.js")
echo "   docs:    swagger-ui-bundle.js from the install itself: $docs"
kill -TERM "$pid"; wait "$pid"; pid=""
if [ -n "$test_python" ]; then
    echo "== pytest -m device, agents from $tmp/venv/bin/python"
    cd "$repo"
    EDGELOOP_DEVICE_PYTHON="$tmp/venv/bin/python" "$test_python" -m pytest -q -p no:cacheprovider -m device
fi
echo "== check-edge passed"
