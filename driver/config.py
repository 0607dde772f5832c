"""DriverConfig: the typed, validated arguments of a PrismDriver.

The app node needs no database credentials: only where the wrapper is, the
tenant, and the tenant's secret file (shared with the wrapper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from prism.driver.errors import DriverConfigError


@dataclass(frozen=True)
class DriverConfig:
    wrapper_host: str = "127.0.0.1"
    wrapper_port: int = 50051
    tenant_id: str = ""
    secret_file: str | Path = ""
    # Reconnect backoff: first delay, doubled up to the cap.
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 5.0
    connect_timeout_s: float = 10.0
    # Rows per frame the wrapper may send (bounded by the wrapper).
    max_frame_rows: int = 1024
    # Deadline of one Write call to the wrapper (the database commit and the
    # wrapper seeing it); waiting for the local replica is bounded separately.
    write_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.wrapper_host, str) or not self.wrapper_host:
            raise DriverConfigError("wrapper_host: required, e.g. '127.0.0.1'")
        if (
            not isinstance(self.wrapper_port, int)
            or isinstance(self.wrapper_port, bool)
            or not 1 <= self.wrapper_port <= 65535
        ):
            raise DriverConfigError(
                f"wrapper_port: {self.wrapper_port!r} is not a TCP port (1-65535)"
            )
        if not isinstance(self.tenant_id, str) or not self.tenant_id:
            raise DriverConfigError("tenant_id: required, the tenant the wrapper serves")
        if not self.secret_file:
            raise DriverConfigError(
                "secret_file: required, the tenant secret shared with the wrapper"
            )
        for name in ("reconnect_min_s", "reconnect_max_s", "connect_timeout_s", "write_timeout_s"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise DriverConfigError(f"{name}: {v!r} must be a positive number of seconds")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise DriverConfigError("reconnect_max_s must be >= reconnect_min_s")
        if not isinstance(self.max_frame_rows, int) or not 1 <= self.max_frame_rows <= 16384:
            raise DriverConfigError(f"max_frame_rows: {self.max_frame_rows!r} not in 1..16384")

    @property
    def target(self) -> str:
        return f"{self.wrapper_host}:{self.wrapper_port}"
