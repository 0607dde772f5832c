"""Type stub of prism.wrapper._vecref, the native vector reference resolver (see _vecref.c)."""

from collections.abc import Sequence

def split(
    payloads: Sequence[bytes], stored: Sequence[bytes | None]
) -> tuple[bytes, list[int], list[int], bytes]: ...
def check(vectors: bytes | memoryview, dim: int) -> tuple[bytes, bytes] | None: ...
