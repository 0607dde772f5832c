"""Type stub of prism.wrapper._rowcodec, the native row codec (see _rowcodec.c)."""

from collections.abc import Sequence

T_BOOL: int
T_INT2: int
T_INT4: int
T_INT8: int
T_TEXT: int
T_FLOAT4: int
T_FLOAT8: int
T_BYTEA: int
T_VECTOR: int

class RowSpec:
    def __init__(
        self,
        names: Sequence[bytes],
        types: Sequence[int],
        roles: Sequence[int],
        keys: Sequence[int],
        vector: int,
        dim: int,
    ) -> None: ...

def encode_tuple(
    spec: RowSpec, msg: bytes, pos: int
) -> tuple[int, tuple[str, bytes, bytes | None, bytes | None]] | None: ...
def copy_rows(
    spec: RowSpec, data: bytes, pos: int
) -> tuple[
    int, list[str], list[bytes], list[bytes | None] | None, bytes | None, list[bytes], bool
]: ...
