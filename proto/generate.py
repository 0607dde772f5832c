"""Regenerate the Python gRPC modules in fabric/ from proto/.

The contract lives in proto/; fabric/wrapper_pb2*.py are build outputs that we
commit so that installing the driver needs no protoc. `tests/unit/test_proto_drift.py`
runs `generate(tmpdir)` and fails if the committed files differ.

Usage: python proto/generate.py            # rewrite fabric/wrapper_pb2*.py
       python proto/generate.py --check    # exit 1 if they drifted
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTO_FILE = "prism/fabric/v1/wrapper.proto"
OUTPUTS = ("wrapper_pb2.py", "wrapper_pb2.pyi", "wrapper_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into out_dir and return the generated files, imports fixed
    to the installed name prism.fabric."""
    from grpc_tools import protoc  # dev dependency only

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(
            [
                "protoc",
                f"-I{PROTO_DIR}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO_DIR / PROTO_FILE),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        gen = Path(tmp) / "prism" / "fabric" / "v1"
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in OUTPUTS:
            text = (gen / name).read_text()
            text = text.replace("from prism.fabric.v1 import", "from prism.fabric import")
            target = out_dir / name
            target.write_text(text)
            written.append(target)
        return written


def drift(tmp: Path) -> list[str]:
    """Names of committed generated files that differ from a fresh run."""
    return [
        p.name for p in generate(tmp) if p.read_text() != (ROOT / "fabric" / p.name).read_text()
    ]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        if sys.argv[1:] == ["--check"]:
            stale = drift(Path(tmp))
            for name in stale:
                print(f"fabric/{name} is stale: run python proto/generate.py", file=sys.stderr)
            return 1 if stale else 0
        for path in generate(Path(tmp)):
            shutil.copy(path, ROOT / "fabric" / path.name)
            print(f"wrote fabric/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
