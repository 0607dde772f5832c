"""Type stub of prism.cache._hamming, the compiled scan (see _hamming.c)."""

import numpy as np

# Any C-contiguous buffer of the documented type; numpy arrays in practice.
Buffer = np.ndarray | bytes

KERNEL: str

def scan(
    head: Buffer,
    tail: Buffer,
    cap: int,
    words: int,
    n: int,
    query: Buffer,
    r1: int,
    r2: int,
    out: Buffer,
    dist: Buffer,
    /,
) -> int: ...
def score(
    head: Buffer,
    tail: Buffer,
    low: Buffer,
    inv_norm: Buffer,
    cap: int,
    words: int,
    bits: int,
    slots: Buffer,
    qr: Buffer,
    half: float,
    step: float,
    out: Buffer,
    /,
) -> None: ...
