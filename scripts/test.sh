#!/usr/bin/env bash
# The test suite: the type check (mypy, configured in pyproject.toml), then unit, contract and
# integration tests (a real Label Studio server is started by the suite on 127.0.0.1 from
# .venv-ls; real small models are trained on real images). Arguments go to pytest; with
# arguments (a file, -k, -m ...) the type check is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "error: .venv is missing; run 'bash scripts/setup.sh' first" >&2
  exit 2
fi
if [ $# -eq 0 ]; then
  echo "mypy (pseudolabel, loops) ..."
  .venv/bin/python -m mypy
fi
exec .venv/bin/python -m pytest "$@"
