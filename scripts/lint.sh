#!/usr/bin/env bash
# Lint and type-check. mypy needs the installed names (prism.fabric, ...), which
# live in folders named fabric/, wrapper/, driver/; a symlink tree gives it them.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
ruff format --check .
tree=build/typecheck
mkdir -p "$tree/prism"
for p in fabric wrapper driver ffi cache cluster; do ln -sfn "../../../$p" "$tree/prism/$p"; done
(cd "$tree" && MYPYPATH=. mypy --config-file ../../pyproject.toml \
    -p prism.fabric -p prism.wrapper -p prism.driver -p prism.ffi -p prism.cache -p prism.cluster)
(cd "$tree" && MYPYPATH=. mypy --config-file ../../pyproject.toml \
    ../../examples/demo.py ../../examples/cache_demo.py ../../examples/fastapi_app.py \
    ../../proto/generate.py)
