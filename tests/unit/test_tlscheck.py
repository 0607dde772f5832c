"""The driver's TLS diagnosis, pure parts: recognizing a plaintext HTTP/2
server by its SETTINGS frame, and the messages that name each cause."""

from __future__ import annotations

import ssl

import grpc
from grpc.aio import AioRpcError, Metadata

from prism.driver import DriverConfig
from prism.driver.link import may_be_tls_mismatch
from prism.driver.tlscheck import (
    H2_PREFACE,
    explain_client_certificate,
    explain_plaintext,
    explain_tls_wrapper,
    explain_verification,
    is_h2_settings,
)
from prism.fabric.errorkinds import ErrorKind, refusal_metadata


def cfg(**kw: object) -> DriverConfig:
    return DriverConfig(tenant_id="acme", secret_file="/s", **kw)  # type: ignore[arg-type]


def test_an_h2_settings_frame_is_recognized() -> None:
    assert H2_PREFACE.startswith(b"PRI * HTTP/2.0")
    settings = bytes([0, 0, 6, 4, 0, 0, 0, 0, 0])  # length 6, SETTINGS, no flags, stream 0
    assert is_h2_settings(settings)
    assert not is_h2_settings(bytes([0, 0, 6, 1, 0, 0, 0, 0, 1]))  # HEADERS on stream 1
    assert not is_h2_settings(b"\x15\x03\x03\x00\x02\x02\x46")  # a TLS alert record
    assert not is_h2_settings(b"HTTP/1.1 400")


def test_each_cause_is_named_with_its_fix() -> None:
    name = cfg(wrapper_host="db.internal", tls_ca_file="/etc/ca.pem")
    mismatch = ssl.SSLCertVerificationError()
    mismatch.verify_message = "Hostname mismatch, certificate is not valid for 'db.internal'."
    assert "not valid for 'db.internal'" in explain_verification(mismatch, name)
    assert "set tls_server_name" in explain_verification(mismatch, name)
    unknown = ssl.SSLCertVerificationError()
    unknown.verify_message = "unable to get local issuer certificate"
    text = explain_verification(unknown, name)
    assert "not trusted by tls_ca_file /etc/ca.pem" in text and "gen-certs' ca.pem" in text
    assert "the system's CA store" in explain_verification(unknown, cfg())
    assert "speaks plaintext gRPC" in explain_plaintext(name)
    assert "serves TLS" in explain_tls_wrapper(cfg(insecure=True))
    assert "tls_cert_file and tls_key_file" in explain_client_certificate(name)


def test_a_refusal_the_wrapper_names_is_not_diagnosed_as_tls() -> None:
    """The driver probes TLS after an UNAVAILABLE handshake, which can wait
    seconds on a healthy wrapper; a refusal carrying the wrapper's prism-error
    kind came over a working connection and needs no probe."""

    def error(code: grpc.StatusCode, trailing: Metadata) -> AioRpcError:
        return AioRpcError(code, Metadata(), trailing, details="x")

    named = Metadata(*refusal_metadata(ErrorKind.UNAVAILABLE))
    assert not may_be_tls_mismatch(error(grpc.StatusCode.UNAVAILABLE, named))
    assert may_be_tls_mismatch(error(grpc.StatusCode.UNAVAILABLE, Metadata()))
    assert not may_be_tls_mismatch(error(grpc.StatusCode.UNAUTHENTICATED, Metadata()))
