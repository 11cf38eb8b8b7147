#!/usr/bin/env bash
# System packages the serve browser test needs (tests/test_serve_browser.py):
# Debian's chromium, driven by Playwright for Python through executable_path, so no
# `playwright install` (it downloads a browser build, which CI cannot reach).
# Runs apt as root (CI is), else through sudo; does nothing when chromium is already there.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
chromium --version 2>/dev/null | head -n 1
# node + npm for the TF.js parity tests (tests/test_tfjs_convert.py; scripts/setup.sh then
# installs @tensorflow/tfjs into .node/): Debian's nodejs, only when node is missing.
if ! command -v node >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
node --version 2>/dev/null | head -n 1
# The Python side (playwright, httpx, fastapi, uvicorn, ...) comes with `pip install -e ".[test]"`.
