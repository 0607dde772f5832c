"""A TCP proxy for fault tests: forwards 127.0.0.1:port (or another local
address) to a target and can cut every connection (and refuse new ones)
until restored, stall them (held open, nothing forwarded), delay what it
forwards, or alter the bytes the server sends (flip, drop, repeat) on chosen
connections."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable

# (offset of this chunk in the connection's server-to-client bytes, chunk)
#   -> the bytes to forward instead.
Mutator = Callable[[int, bytes], bytes]


class Proxy:
    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", listen_host: str = "127.0.0.1"
    ) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._cut = False
        self._closed = False
        self._stalled: set[int] = set()
        self._delay = 0.0
        self.connections = 0
        self._mutators: list[Mutator] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut:
                client.close()
                continue
            # Outside the lock: a target that does not answer (a partitioned
            # or stopped server) must not hold up cut() and restore().
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            # Blocking from now on, as a TCP link is: a peer that stops
            # reading makes the sender wait, never closes the connection.
            upstream.settimeout(None)
            with self._lock:
                if self._cut:
                    client.close()
                    upstream.close()
                    continue
                self._pairs.append((client, upstream))
                self.connections += 1
                mutate = self._mutators.pop(0) if self._mutators else None
            threading.Thread(
                target=self._pump, args=(client, upstream, mutate), daemon=True
            ).start()

    def mutate_next(self, fn: Mutator) -> None:
        """Pass the server-to-client bytes of the next new connection through fn."""
        with self._lock:
            self._mutators.append(fn)

    def _pump(self, a: socket.socket, b: socket.socket, mutate: Mutator | None) -> None:
        socks = [a, b]
        downstream = 0  # bytes received from the server on this connection
        try:
            while True:
                if id(a) in self._stalled:
                    if self._closed:
                        return
                    threading.Event().wait(0.05)
                    continue
                ready, _, _ = select.select(socks, [], [], 0.1)
                if self._closed:
                    return
                if id(a) in self._stalled:
                    continue  # stalled while waiting: hold what arrived
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is b and mutate is not None:
                        offset, downstream = downstream, downstream + len(data)
                        data = mutate(offset, data)
                    if self._delay:
                        threading.Event().wait(self._delay)
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):  # a socket closed under us by cut()
            return
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        with self._lock:
            self._cut = True
            for a, b in self._pairs:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                        s.close()
            self._pairs.clear()

    def stall(self) -> None:
        """Stop forwarding on the connections open now (they stay open, as a
        hung link does); connections made later work normally."""
        with self._lock:
            self._stalled.update(id(a) for a, _ in self._pairs)

    def delay(self, seconds: float) -> None:
        """Hold every chunk `seconds` before forwarding it (a slow link), on
        every connection, until restored."""
        self._delay = seconds

    def restore(self) -> None:
        with self._lock:
            self._cut = False
            self._stalled.clear()
            self._delay = 0.0

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
