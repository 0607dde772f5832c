#!/usr/bin/env bash
# The main job on the embedded default: embedded PostgreSQL with sample data,
# the prism-wrapper process, and an example app that syncs and queries.
set -euo pipefail
source "$(dirname "$0")/env.sh" all
python examples/demo.py "$@"
