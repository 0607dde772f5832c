#!/usr/bin/env bash
# The test command: set up the venv, lint and type-check, then run every test
# (unit tests, and integration tests against a real PostgreSQL, the real
# prism-wrapper process and gRPC over TCP). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/env.sh" dev
python proto/generate.py --check
bash scripts/lint.sh
python -m pytest -q -rs -p no:cacheprovider "$@"
