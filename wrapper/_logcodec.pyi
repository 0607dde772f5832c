"""Type stub of prism.wrapper._logcodec, the row log's native codec (see _logcodec.c)."""

from collections.abc import Iterable, Sequence

from prism.wrapper.recent import RowTuple

def encode(
    table: str,
    keys: Sequence[str],
    first_position: int,
    payloads: Sequence[bytes | None],
    vectors: Iterable[bytes | None],
    hidden: Iterable[bytes | None],
    commits: Iterable[int],
    stored_us: int,
    old_keys: Iterable[str | None],
) -> tuple[bytes, list[int]]: ...
def rows(
    data: bytes,
    table: str,
    after: int,
    head: int,
    index: dict[str, tuple[int, int, int, int]],
    undo: dict[tuple[str, str], tuple[int, int, int, int] | None],
    live_only: bool,
) -> tuple[list[RowTuple], int]: ...
