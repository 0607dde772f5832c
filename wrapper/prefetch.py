"""Read ahead of the pipeline: a source's batches pulled on a thread of their own.

Between a source's snapshot reader and the pipeline's initial copy. The
database client (libpq through psycopg, or pymysql) waits on its socket with
the interpreter lock released, so while the pipeline thread vectorizes and
encodes one batch, this thread already receives the next and the database
never idles waiting for us. A bounded queue keeps memory to a few batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class Prefetch(Generic[T]):
    """Iterate `source` on a thread, `depth` items ahead. Iterating this
    object yields the same items in order and raises what `source` raised.
    close() (also on leaving a `with` block) stops the thread at its next
    item and closes `source` there, on the thread that used it."""

    def __init__(self, source: Iterator[T], depth: int = 4, name: str = "prefetch") -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    break
            else:
                self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failed(exc))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # the consumer may be gone: report if it is not
                    self._put(_Failed(exc))

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
