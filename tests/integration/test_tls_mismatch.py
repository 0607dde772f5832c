"""A driver whose TLS settings do not fit the wrapper's fails fast (issue 15):
the real prism-wrapper process and a real driver, TLS against plaintext and
the other way round, a CA the driver does not trust, a name the
certificate does not hold, a missing client certificate. Each used to
repeat "Tls handshake failed" forever; now wait_ready() and every read
raise a permanent TlsMismatchError within connect_timeout_s that names the
likely cause. A wrapper that is merely down is still retried."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from prism.driver import TlsMismatchError, WaitTimeoutError
from prism.wrapper.certs import CertPaths, generate
from support.servers import driver_for, new_port

pytestmark = pytest.mark.integration

CONNECT_TIMEOUT_S = 5.0


async def fails_fast(driver: Any, *needles: str) -> TlsMismatchError:
    """wait_ready() raises TlsMismatchError within connect_timeout_s naming
    the cause, and so does every read after it."""
    async with driver:
        started = time.monotonic()
        with pytest.raises(TlsMismatchError) as err:
            await driver.wait_ready(timeout=60)
        assert time.monotonic() - started < CONNECT_TIMEOUT_S
        for needle in needles:
            assert needle in str(err.value), str(err.value)
        assert not err.value.retriable
        with pytest.raises(TlsMismatchError):
            driver.get("public.items", 1)
        with pytest.raises(TlsMismatchError):
            await driver.query(text="anything")
        return err.value


@pytest.fixture
def items(db: Any) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")


async def test_tls_driver_against_a_plaintext_wrapper(
    wrapper: Any, items: None, secret_file: Path, certs: CertPaths
) -> None:
    proc = wrapper([{"name": "items"}], server={"insecure": True})
    driver = driver_for(
        proc.port, secret_file, tls_ca_file=certs.ca_cert, connect_timeout_s=CONNECT_TIMEOUT_S
    )
    await fails_fast(driver, "speaks plaintext gRPC", "set insecure=True")


async def test_plaintext_driver_against_a_tls_wrapper(
    wrapper: Any, items: None, secret_file: Path
) -> None:
    proc = wrapper([{"name": "items"}])
    driver = driver_for(proc, secret_file, insecure=True, connect_timeout_s=CONNECT_TIMEOUT_S)
    await fails_fast(driver, "serves TLS", "drop insecure and set tls_ca_file")


async def test_a_ca_the_driver_does_not_trust(
    wrapper: Any, items: None, secret_file: Path, tmp_path: Path
) -> None:
    proc = wrapper([{"name": "items"}])
    other = generate(tmp_path / "other-pki")
    driver = driver_for(
        proc, secret_file, tls_ca_file=other.ca_cert, connect_timeout_s=CONNECT_TIMEOUT_S
    )
    await fails_fast(driver, "not trusted by tls_ca_file", str(other.ca_cert))


async def test_a_name_the_certificate_does_not_hold(
    wrapper: Any, items: None, secret_file: Path
) -> None:
    proc = wrapper([{"name": "items"}])
    driver = driver_for(
        proc, secret_file, tls_server_name="wrong.example", connect_timeout_s=CONNECT_TIMEOUT_S
    )
    await fails_fast(driver, "not valid for 'wrong.example'", "set tls_server_name")


async def test_a_missing_client_certificate(
    wrapper: Any, items: None, secret_file: Path, certs: CertPaths
) -> None:
    proc = wrapper([{"name": "items"}], tls={"client_ca_file": str(certs.ca_cert)})
    driver = driver_for(proc, secret_file, connect_timeout_s=CONNECT_TIMEOUT_S)
    await fails_fast(driver, "requires a client certificate", "tls_cert_file")
    # With its certificate, the same driver settings work.
    cert, key = certs.clients["acme-app"]
    async with driver_for(proc, secret_file, tls_cert_file=cert, tls_key_file=key) as ok:
        await ok.wait_ready(timeout=30)


async def test_a_wrapper_that_is_down_is_retried_not_misnamed(
    secret_file: Path, certs: CertPaths
) -> None:
    driver = driver_for(new_port(), secret_file, connect_timeout_s=CONNECT_TIMEOUT_S)
    async with driver:
        with pytest.raises(WaitTimeoutError):
            await driver.wait_ready(timeout=3)
        assert driver.stats()["reconnects"] >= 1
        assert "Connection refused" in (driver.stats()["last_error"] or "")
