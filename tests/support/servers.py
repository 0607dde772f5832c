"""Real servers for integration tests: PostgreSQL and the prism-wrapper process.

A test that needs a server fails (not skips) when CI=true and the server
cannot start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.wrapper.embedded_pg import (
    EmbeddedPostgres,
    free_port,
    remove_tree,
    shared_tmp,
    sweep_stale,
)

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(what: str, exc: BaseException) -> None:
    msg = f"{what} could not start: {exc}"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


PG_PREFIX = "prism-test-pg-"


def start_postgres(**settings: str) -> EmbeddedPostgres:
    """A PostgreSQL cluster in a new /var/tmp directory; stop it with
    stop_postgres(), which removes the directory too. Directories that
    killed runs left behind are swept first."""
    sweep_stale(PG_PREFIX)
    pg = EmbeddedPostgres(shared_tmp(PG_PREFIX) / "pg", settings=dict(settings))
    try:
        pg.start()
    except Exception as exc:
        remove_tree(pg.base_dir.parent)
        unavailable("PostgreSQL", exc)
    return pg


def stop_postgres(pg: EmbeddedPostgres) -> None:
    """Stop a cluster of start_postgres() and remove its directory (its
    data directory alone is ~55 MB)."""
    try:
        pg.stop()
    finally:
        remove_tree(pg.base_dir.parent)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def write_config(
    path: Path,
    sections: dict[str, dict[str, Any]],
    tables: list[dict[str, Any]],
    tenants: list[dict[str, Any]] | None = None,
) -> Path:
    lines = []
    for name, body in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
        lines.append("")
    for array, entries in (("tenants", tenants or []), ("tables", tables)):
        for t in entries:
            lines.append(f"[[{array}]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in t.items()]
            lines.append("")
    path.write_text("\n".join(lines))
    return path


class WrapperProcess:
    """The real `prism-wrapper run` process, started, killed and restarted."""

    def __init__(
        self,
        config_path: Path,
        port: int,
        log_path: Path,
        ca_file: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
        host: str = "127.0.0.1",
        command_prefix: tuple[str, ...] = (),
    ) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.ca_file = ca_file  # the CA of its TLS certificate; None: plaintext
        self.client_cert = client_cert  # (cert, key) when it requires mutual TLS
        self.host = host  # where it listens
        # e.g. `ip netns exec NS`, which execs in place: proc.pid stays the wrapper's
        self.command_prefix = command_prefix
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, wait: bool = True, timeout: float = 60.0) -> WrapperProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *self.command_prefix,
                sys.executable,
                "-m",
                "prism.wrapper.cli",
                "run",
                "--config",
                str(self.config_path),
            ],
            stdout=log,
            stderr=log,
            env=dict(os.environ, PRISM_CHORUS_LISTEN_PORT=str(self.port)),
        )
        if wait:
            self.wait_serving(timeout)
        return self

    def check(self) -> subprocess.CompletedProcess[str]:
        """Run `prism-wrapper check` on this wrapper's config."""
        return subprocess.run(
            [sys.executable, "-m", "prism.wrapper.cli", "check", "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def channel(self) -> grpc.Channel:
        """A blocking gRPC channel to this wrapper, over TLS when it serves TLS."""
        if self.ca_file is None:
            return grpc.insecure_channel(self.target)
        cert, key = self.client_cert or (None, None)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=key.read_bytes() if key else None,
            certificate_chain=cert.read_bytes() if cert else None,
        )
        return grpc.secure_channel(self.target, creds)

    def hello(self, secret_file: Path, tenant: str = "acme", timeout: float = 5.0) -> Login:
        """Authenticate as a driver would (Challenge, then Hello with the
        proof), with the blocking stub: for tests that talk gRPC directly."""
        return authenticate(self.channel(), secret_file, tenant, timeout)

    def health(self, timeout: float = 2.0) -> pb.HealthResponse:
        with self.channel() as ch:
            return pb_grpc.WrapperServiceStub(ch).Health(pb.HealthRequest(), timeout=timeout)

    def wait_serving(self, timeout: float = 60.0) -> pb.HealthResponse:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"prism-wrapper exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                h = self.health()
                if h.status == "SERVING":
                    return h
                last = h
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(
            f"prism-wrapper not serving after {timeout}s ({last}):\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclass
class Login:
    """A session opened with the blocking stub, as a driver would."""

    hello: pb.HelloResponse
    key: bytes  # the session key that MACs Subscribe and Write requests

    @property
    def session(self) -> bytes:
        return self.hello.session

    def signed(self, request: Any) -> Any:
        from prism.fabric.auth import request_mac

        request.mac = request_mac(self.key, request)
        return request


def authenticate(
    channel: grpc.Channel, secret_file: Path, tenant: str = "acme", timeout: float = 5.0
) -> Login:
    from prism.fabric import PROTOCOL_VERSION
    from prism.fabric.auth import client_proof, session_key
    from prism.fabric.keys import load_secret

    secret = load_secret(secret_file)
    with channel:
        stub = pb_grpc.WrapperServiceStub(channel)
        nonce = stub.Challenge(
            pb.ChallengeRequest(protocol_version=PROTOCOL_VERSION, tenant_id=tenant),
            timeout=timeout,
        ).server_nonce
        mine = os.urandom(32)
        hello = stub.Hello(
            pb.HelloRequest(
                protocol_version=PROTOCOL_VERSION,
                tenant_id=tenant,
                client_nonce=mine,
                server_nonce=nonce,
                proof=client_proof(secret, tenant, nonce, mine),
            ),
            timeout=timeout,
        )
    return Login(hello, session_key(secret, tenant, nonce, mine))


def new_port() -> int:
    return free_port()


# The CA of the test wrappers' TLS certificates (set by conftest's `certs`):
# a driver given a bare port (a proxy's) trusts it unless told otherwise.
TEST_CA: Path | None = None


def driver_for(
    target: WrapperProcess | int, secret_file: Path, tenant: str = "acme", **config: Any
) -> Any:
    """A PrismDriver for a test wrapper (or any port, such as a proxy's),
    with fast reconnects, over TLS when the wrapper serves TLS; `config`
    overrides DriverConfig fields."""
    from prism.driver import DriverConfig, PrismDriver

    port = target if isinstance(target, int) else target.port
    ca = TEST_CA if isinstance(target, int) else target.ca_file
    tls: dict[str, Any] = {"insecure": True} if ca is None else {"tls_ca_file": ca}
    if config.get("insecure"):
        tls = {}
    args: dict[str, Any] = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.5} | tls | config
    return PrismDriver(
        DriverConfig(
            wrapper_host="127.0.0.1",
            wrapper_port=port,
            tenant_id=tenant,
            secret_file=secret_file,
            **args,
        )
    )


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Prometheus text as {(sample name, sorted labels): value}, parsed by
    prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(port: int, timeout: float = 10.0) -> Samples:
    """GET http://127.0.0.1:port/metrics, parsed."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return parse_metrics(r.read().decode())


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))
