"""`prism-wrapper status`: ask a running wrapper's Health and say what it
means, for a person (a summary) or a program (`--json`).

On the DB node, beside the daemon: the address and TLS settings come from
the daemon's own config. The wrapper's certificate is checked against the
CA given with --ca, else gen-certs' ca.pem beside tls.cert_file, else
tls.client_ca_file (one development CA signs both sides), else the system's
roots; and against the certificate's own first name, since the daemon may
listen on 0.0.0.0 while its certificate names the host. Formatting is pure
code (summary, as_dict), apart from the one gRPC call (fetch_health).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.wrapper.config import WrapperConfig
from prism.wrapper.errors import ConfigError, WrapperError


def target_of(cfg: WrapperConfig) -> str:
    """Where the daemon of `cfg` answers on this host."""
    host = cfg.server.listen_host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{cfg.server.listen_port}"


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None


def _first_name(cert_pem: bytes) -> str | None:
    """The first DNS name or IP address the certificate is valid for."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    for name in sans:
        if isinstance(name, x509.DNSName):
            return str(name.value)
        if isinstance(name, x509.IPAddress):
            return str(name.value)
    return None


def channel_for(
    cfg: WrapperConfig,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> grpc.Channel:
    """A blocking channel to the daemon of `cfg`, over TLS unless it serves
    plaintext."""
    target = target_of(cfg)
    if cfg.insecure:
        return grpc.insecure_channel(target)
    if ca_file is None:
        beside = Path(cfg.tls.cert_file).parent / "ca.pem"
        if beside.exists():
            ca_file = str(beside)
        elif cfg.tls.client_ca_file:
            ca_file = cfg.tls.client_ca_file
    if bool(cert_file) != bool(key_file):
        raise ConfigError("status: give --cert and --key together (a client certificate)")
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "--ca") if ca_file else None,
        private_key=_read(key_file, "--key") if key_file else None,
        certificate_chain=_read(cert_file, "--cert") if cert_file else None,
    )
    options: list[tuple[str, Any]] = []
    name = _first_name(_read(cfg.tls.cert_file, "tls.cert_file"))
    if name:
        options.append(("grpc.ssl_target_name_override", name))
    return grpc.secure_channel(target, creds, options=options)


def fetch_health(channel: grpc.Channel, target: str, timeout: float) -> pb.HealthResponse:
    """One Health call; a failure is a WrapperError that says why."""
    try:
        with channel:
            response: pb.HealthResponse = pb_grpc.WrapperServiceStub(channel).Health(
                pb.HealthRequest(), timeout=timeout
            )
            return response
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        hint = ""
        if "handshake" in str(details).lower() or "ssl" in str(details).lower():
            hint = (
                " (TLS: give the CA of the wrapper's certificate with --ca, and a client "
                "certificate with --cert/--key when tls.client_ca_file is set)"
            )
        raise WrapperError(
            f"no answer from the wrapper at {target}: {code}: {details}{hint}"
        ) from None


def as_dict(h: pb.HealthResponse, target: str) -> dict[str, Any]:
    """Health as plain JSON-ready values (`status --json`)."""
    return {
        "target": target,
        "status": h.status,
        "detail": h.detail,
        "stream_id": h.stream_id,
        "head_position": h.head_position,
        "source_position": h.source_position,
        "last_commit_time_us": h.last_commit_time_us,
        "counters": dict(sorted(h.counters.items())),
    }


_MEANING = {
    "SERVING": "streaming from the database and serving drivers",
    "STARTING": "starting: discovering tables or connecting",
    "SNAPSHOT": "copying the tables (drivers wait for the copy)",
    "DEGRADED": "serving drivers from its store, but not replicating",
}


def _ago(us: int, now: float) -> str:
    if not us:
        return "no change stored yet"
    at = dt.datetime.fromtimestamp(us / 1e6, dt.UTC)
    secs = max(0.0, now - us / 1e6)
    return f"last source commit {at:%Y-%m-%d %H:%M:%S}Z, {secs:.0f}s ago"


def summary(h: pb.HealthResponse, target: str, now: float | None = None) -> str:
    """A few lines for a person on call."""
    now = time.time() if now is None else now
    c = dict(h.counters)
    lines = [f"prism-wrapper at {target}: {h.status} ({_MEANING.get(h.status, h.status.lower())})"]
    if h.detail:
        lines.append(f"  detail       {h.detail}")
    lines.append(f"  stream       {h.stream_id or '(none yet)'}, head position {h.head_position}")
    lines.append(f"  source       {h.source_position or '-'}; {_ago(h.last_commit_time_us, now)}")
    lines.append(
        f"  stored       {c.get('transactions', 0)} transactions, {c.get('changes', 0)} changes "
        f"since start; {c.get('snapshot_rows', 0)} rows copied"
    )
    if "subscribers" in c:
        lines.append(
            f"  drivers      {c['subscribers']} subscribed; {c.get('frames_sent', 0)} frames sent"
        )
    if "store_bytes" in c:
        free = c.get("store_disk_free_bytes")
        lines.append(
            f"  store        {c['store_bytes'] / 1e6:.1f} MB"
            + (f", {free / 1e9:.1f} GB free on its disk" if free is not None else "")
            + (f"; disk filled up {c['store_full']} time(s)" if c.get("store_full") else "")
        )
    lines.append(f"  retries      {c.get('retries', 0)} database retries since start")
    epochs = {k.partition(":")[2]: v for k, v in c.items() if k.startswith("key_epoch:")}
    if epochs:
        lines.append("  key epochs   " + ", ".join(f"{t} {e}" for t, e in sorted(epochs.items())))
    missing = {k: v for k, v in c.items() if k.startswith("vector_missing:")}
    for k, v in sorted(missing.items()):
        _, table, reason = k.split(":", 2)
        lines.append(f"  no vector    {table}: {v} rows ({reason})")
    return "\n".join(lines)
