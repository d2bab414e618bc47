#!/usr/bin/env bash
# One command to set up pseudolabel on a fresh machine:
#   .venv     the project (torch 2.14.1 / torchvision 0.29.1, the package with dev extras)
#   .venv-ls  the Label Studio server, in its own venv: it pins Django, numpy and pyarrow
#             versions that must not leak into the project venv.
# Debian's chromium (browser tests) and dataset-fashion-mnist (detection demo/benchmark) when root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade "pip<26.2"
# torch first, from the pinned pair (on these machines the wheels lie on local disk).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[dev]"

if [ ! -x .venv-ls/bin/label-studio ]; then
  "$PY" -m venv .venv-ls
  .venv-ls/bin/python -m pip install -q --upgrade "pip<26.2"
  # Pinned: the version the tests and the README's measurements ran against (with label-studio-sdk 2.1.2).
  .venv-ls/bin/python -m pip install -q "label-studio==1.23.2"
fi

# Debian packages: Chromium for the browser tests (driven by Playwright from PyPI; Playwright's
# own browser download does not work offline), Fashion-MNIST for the detection/segmentation demos
# and the benchmark (optional).
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") \
      || echo "note: could not install ${need[*]}: the browser tests and the Fashion-MNIST demos need them"
  else
    echo "note: run 'sudo apt-get install ${need[*]}' for the browser tests and the Fashion-MNIST demos"
  fi
fi
# Chromium for the browser tests (tests/browser.py drives it with Playwright; CI needs it).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
      || echo "note: could not install chromium; the browser tests need it"
  else
    echo "note: run 'sudo apt-get install chromium' for the browser tests"
  fi
fi
echo "setup done: .venv (project) and .venv-ls (Label Studio server)"
