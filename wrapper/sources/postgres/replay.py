"""A ChangeSource that replays recorded pgoutput bytes (tests, debugging).

Feeds the same decoder the live PostgreSQL source uses, from a file of
(u32 big-endian length, message) records as written by
tests/fixtures/capture_pgoutput.py, so the pipeline's pure parts (decoding,
applying to the store) are tested on bytes captured from a real server
without one running. Acknowledgements are recorded, not sent anywhere.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from prism.wrapper.errors import SourceError
from prism.wrapper.sources.base import ChangeSource, SourceTransaction
from prism.wrapper.sources.postgres.pgoutput import PgOutputDecoder


def read_messages(path: Path) -> list[bytes]:
    return split_records(path.read_bytes(), str(path))


def split_records(data: bytes, path: str, pos: int = 0) -> list[bytes]:
    """(u32 big-endian length, bytes) records from `pos` on."""
    out = []
    while pos < len(data):
        if pos + 4 > len(data):
            raise SourceError(f"{path}: truncated record header at byte {pos}")
        (n,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if pos + n > len(data):
            raise SourceError(f"{path}: truncated record at byte {pos}")
        out.append(data[pos : pos + n])
        pos += n
    return out


class ReplaySource(ChangeSource):
    def __init__(self, messages: list[bytes], binary: bool) -> None:
        self._messages = messages
        self._decoder = PgOutputDecoder(binary=binary)
        self.acknowledged: list[int] = []

    @classmethod
    def from_file(cls, path: Path, binary: bool) -> ReplaySource:
        return cls(read_messages(path), binary)

    def transactions(self, idle_timeout: float = 0.0) -> Iterator[SourceTransaction | None]:
        for msg in self._messages:
            stx = self._decoder.decode(msg)
            if stx is not None:
                yield stx

    def acknowledge(self, position: int) -> None:
        self.acknowledged.append(position)

    def close(self) -> None:
        self._messages = []
