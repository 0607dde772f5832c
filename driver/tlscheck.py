"""Why the link to the wrapper fails at the TLS layer, when the cause is a
setting that no retry can fix.

gRPC reports a TLS mismatch as UNAVAILABLE, the status of a wrapper that
is merely restarting, and sometimes only as "Socket closed" (a plaintext
driver at a TLS wrapper, or a TLS wrapper that wants a client certificate).
So after a failed handshake the link asks once more, itself, with Python's
ssl module, whose errors name the cause: the certificate's CA is unknown,
the name does not match, the wrapper speaks plaintext HTTP/2 (checked with
HTTP/2's own connection preface), or it requires a client certificate.
A wrapper that does not answer at all (refused, timed out) is no mismatch:
the driver goes on retrying it.

I/O only at the edges: `diagnose` runs the probes; what they found is named
by the pure `explain_*` functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable

from prism.driver.config import DriverConfig

# HTTP/2's client connection preface and an empty SETTINGS frame (RFC 9113
# §3.4): a plaintext gRPC server answers with a SETTINGS frame of its own.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
H2_SETTINGS = 0x4
_PLAINTEXT_REPLY_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH")


def is_h2_settings(head: bytes) -> bool:
    """The first 9 bytes of a reply are an HTTP/2 SETTINGS frame header on
    stream 0: the peer speaks plaintext HTTP/2."""
    return len(head) >= 9 and head[3] == H2_SETTINGS and head[5:9] == b"\x00\x00\x00\x00"


def explain_verification(exc: ssl.SSLCertVerificationError, cfg: DriverConfig) -> str:
    name = cfg.tls_server_name or cfg.wrapper_host
    message = exc.verify_message or str(exc)
    if "mismatch" in message.lower():
        return (
            f"the wrapper's certificate is not valid for {name!r} ({message}): set "
            "tls_server_name to a name the certificate holds (prism-wrapper gen-certs --host), "
            "or connect to the wrapper by that name"
        )
    trust = f"tls_ca_file {cfg.tls_ca_file}" if cfg.tls_ca_file else "the system's CA store"
    return (
        f"the wrapper's certificate is not trusted by {trust} ({message}): set tls_ca_file to "
        "the CA that signed the wrapper's certificate (gen-certs' ca.pem)"
    )


def explain_plaintext(cfg: DriverConfig) -> str:
    return (
        f"the wrapper at {cfg.target} speaks plaintext gRPC (server.insecure = true), and "
        "this driver TLS: serve TLS on the wrapper ([tls] cert_file and key_file), or, for "
        "development only, set insecure=True in DriverConfig"
    )


def explain_tls_wrapper(cfg: DriverConfig) -> str:
    return (
        f"the wrapper at {cfg.target} serves TLS, and this driver has insecure=True: drop "
        "insecure and set tls_ca_file to the CA of the wrapper's certificate"
    )


def explain_client_certificate(cfg: DriverConfig) -> str:
    return (
        f"the wrapper at {cfg.target} requires a client certificate (mutual TLS, "
        "tls.client_ca_file) and this driver has none: set tls_cert_file and tls_key_file"
    )


async def _bounded(step: Awaitable[bytes], timeout: float) -> bytes | None:
    try:
        return await asyncio.wait_for(step, timeout)
    except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError):
        return None


async def _speaks_h2_plaintext(cfg: DriverConfig, timeout: float) -> bool:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(cfg.wrapper_host, cfg.wrapper_port), timeout
        )
    except (TimeoutError, OSError):
        return False
    try:
        writer.write(H2_PREFACE)
        head = await _bounded(reader.readexactly(9), timeout)
        return head is not None and is_h2_settings(head)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _client_context(cfg: DriverConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file else None)
    if cfg.tls_cert_file and cfg.tls_key_file:
        ctx.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def _tls_session_refused(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
) -> bool:
    """After a completed handshake: does the wrapper end the session at
    once (TLS 1.3 sends a missing client certificate's alert only now)?"""
    writer.write(H2_PREFACE)
    try:
        head = await asyncio.wait_for(reader.read(9), timeout)
    except ssl.SSLError:
        return True
    except (TimeoutError, OSError):
        return False
    return head == b""


async def diagnose(cfg: DriverConfig, timeout: float) -> str | None:
    """The likely cause of a failed TLS connection to the wrapper, or None
    when there is no permanent one to name (e.g. the wrapper is down)."""
    if cfg.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(cfg.wrapper_host, cfg.wrapper_port, ssl=ctx), timeout
            )
        except (TimeoutError, OSError):
            return None
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return explain_tls_wrapper(cfg)
    try:
        ctx = _client_context(cfg)
    except (OSError, ssl.SSLError):
        return None  # DriverConfig reads these files itself and says so
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                cfg.wrapper_host,
                cfg.wrapper_port,
                ssl=ctx,
                server_hostname=cfg.tls_server_name or cfg.wrapper_host,
            ),
            timeout,
        )
    except ssl.SSLCertVerificationError as exc:
        return explain_verification(exc, cfg)
    except ssl.SSLError as exc:
        reason = str(getattr(exc, "reason", "") or exc).upper()
        if any(r in reason for r in _PLAINTEXT_REPLY_REASONS) or isinstance(exc, ssl.SSLEOFError):
            return explain_plaintext(cfg) if await _speaks_h2_plaintext(cfg, timeout) else None
        return None
    except ConnectionResetError:
        return explain_plaintext(cfg) if await _speaks_h2_plaintext(cfg, timeout) else None
    except (TimeoutError, OSError):
        return None
    try:
        if not cfg.tls_cert_file and await _tls_session_refused(reader, writer, timeout):
            return explain_client_certificate(cfg)
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
