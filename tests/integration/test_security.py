"""The secure fabric on the real prism-wrapper process: TLS and mutual TLS,
tenants that cannot reach each other, rate-limited authentication, key
rotation that drivers follow without reconnecting (also under continuous
writes, with the consistency checker), secret rotation with an overlap
window, and the CLI that makes secrets and certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from prism.driver import (
    AuthenticationError,
    InvalidWriteError,
    SecretRetiredError,
    TenantDeniedError,
    TlsMismatchError,
    UnknownTenantError,
)
from prism.fabric import PROTOCOL_VERSION
from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.fabric.auth import client_proof
from prism.fabric.keys import load_secret, write_secret
from prism.fabric.payload import encode_row
from prism.wrapper.certs import CertPaths
from support.consistency import (
    KEYS,
    SCHEMA,
    TABLES_CONFIG,
    VEC_DIM,
    BackgroundWorkload,
    Workload,
    wait_consistent,
)
from support.servers import WrapperProcess, authenticate, driver_for

pytestmark = pytest.mark.integration

TWO_TENANTS_SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, title text);
CREATE TABLE notes (id int PRIMARY KEY, body text);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20) g;
INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 5) g;
"""


def tenant_files(tmp_path: Path, *names: str) -> dict[str, Path]:
    files = {}
    for n in names:
        files[n] = tmp_path / f"{n}.secret"
        write_secret(files[n])
    return files


def two_tenants(
    wrapper: Any, tmp_path: Path, identities: bool = False, **overrides: Any
) -> tuple[WrapperProcess, dict[str, Path]]:
    files = tenant_files(tmp_path, "acme", "other")
    tenants: list[dict[str, Any]] = [
        {"id": "acme", "secret_files": [str(files["acme"])]},
        {"id": "other", "secret_files": [str(files["other"])]},
    ]
    if identities:
        tenants[0]["client_identities"] = ["acme-app"]
        tenants[1]["client_identities"] = ["other-app"]
    tables = [
        {"name": "items", "tenant": "acme", "writable": True},
        {"name": "notes", "tenant": "other", "writable": True},
    ]
    return wrapper(tables, tenants=tenants, **overrides), files


async def test_tenants_see_only_their_tables_and_are_denied_the_others(
    db: Any, wrapper: Any, tmp_path: Path
) -> None:
    db.execute(TWO_TENANTS_SCHEMA)
    proc, files = two_tenants(wrapper, tmp_path)
    async with (
        driver_for(proc, files["acme"], tenant="acme") as acme,
        driver_for(proc, files["other"], tenant="other") as other,
    ):
        await acme.wait_ready(timeout=30)
        await other.wait_ready(timeout=30)
        assert acme.get("items", 3) == {"id": 3, "title": "item 3"}
        assert other.get("notes", 2) == {"id": 2, "body": "note 2"}
        assert set(acme.stats()["rows"]) == {"public.items"}
        assert set(other.stats()["rows"]) == {"public.notes"}
        # other's driver does not know acme's table, so it sends nothing.
        with pytest.raises(InvalidWriteError, match=r"unknown table 'public.items'"):
            await other.write(row_id=1, data={"title": "stolen"}, table="public.items")
        # Its own table it can.
        await other.write(row_id=9, data={"body": "mine"}, table="public.notes")
        assert other.get("notes", 9) == {"id": 9, "body": "mine"}
    with db.connect() as c:
        assert c.execute("SELECT title FROM items WHERE id = 1").fetchone() == ("item 1",)

    # Below the driver: other's session asking for acme's stream or tables.
    login = proc.hello(files["other"], "other")
    subscribe = pb.SubscribeRequest(
        tenant_id="acme", session=login.session, subscription=os.urandom(16)
    )
    op = pb.WriteOp(table="public.items", kind=pb.DELETE, key=encode_row({"id": 1}))
    write = pb.WriteRequest(
        protocol_version=PROTOCOL_VERSION, tenant_id="other", ops=[op], session=login.session
    )
    with proc.channel() as ch:
        stub = pb_grpc.WrapperServiceStub(ch)
        with pytest.raises(grpc.RpcError) as denied:
            next(iter(stub.Subscribe(login.signed(subscribe), timeout=5)))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "belongs to tenant 'other'" in (denied.value.details() or "")
        with pytest.raises(grpc.RpcError) as denied:
            stub.Write(login.signed(write), timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A session token alone (as seen on a plaintext wire) is refused:
        # requests must carry the MAC of the session key.
        write.mac = b"\0" * 32
        with pytest.raises(grpc.RpcError) as stolen:
            stub.Write(write, timeout=5)
        assert stolen.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "MAC does not verify" in (stolen.value.details() or "")
    # Each refusal is logged with the peer's address.
    log = proc.log_tail(10**7)
    assert "refused" in log and "127.0.0.1" in log


def signed_write(login: Any, tenant: str, table: str, key: int, body: str) -> pb.WriteRequest:
    """A raw WriteRequest for one row of TWO_TENANTS_SCHEMA, signed with `login`."""
    op = pb.WriteOp(
        table=table,
        kind=pb.UPSERT,
        key=encode_row({"id": key}),
        data=encode_row({"body": body} if table == "public.notes" else {"title": body}),
    )
    return login.signed(
        pb.WriteRequest(
            protocol_version=PROTOCOL_VERSION,
            tenant_id=tenant,
            ops=[op],
            session=login.session,
            request_id=f"r{key}",
        )
    )


async def test_a_write_batch_is_refused_whole_when_any_request_fails_authorization(
    db: Any, wrapper: Any, tmp_path: Path
) -> None:
    """WriteBatch authenticates every request as Write would: one request for
    another tenant's table, or with a MAC that does not verify, refuses the
    whole call, and none of its requests runs."""
    db.execute(TWO_TENANTS_SCHEMA)
    proc, files = two_tenants(wrapper, tmp_path)
    login = proc.hello(files["other"], "other")

    def write(table: str, key: int, body: str) -> pb.WriteRequest:
        return signed_write(login, "other", table, key, body)

    with proc.channel() as ch:
        stub = pb_grpc.WrapperServiceStub(ch)
        own, foreign = write("public.notes", 10, "mine"), write("public.items", 1, "stolen")
        with pytest.raises(grpc.RpcError) as denied:
            stub.WriteBatch(pb.WriteBatchRequest(requests=[own, foreign]), timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        forged = write("public.notes", 11, "forged")
        forged.mac = b"\0" * 32
        with pytest.raises(grpc.RpcError) as stolen:
            stub.WriteBatch(
                pb.WriteBatchRequest(requests=[write("public.notes", 12, "x"), forged]), timeout=5
            )
        assert stolen.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "MAC does not verify" in (stolen.value.details() or "")
        with pytest.raises(grpc.RpcError) as empty:
            stub.WriteBatch(pb.WriteBatchRequest(requests=[]), timeout=5)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The same requests, authorized, each get their own result.
        ok = stub.WriteBatch(
            pb.WriteBatchRequest(
                requests=[write("public.notes", 13, "a"), write("public.notes", 14, "b")]
            ),
            timeout=30,
        )
        assert [r.HasField("response") for r in ok.results] == [True, True]
        first, second = (r.response for r in ok.results)
        assert first.event_id != second.event_id and 0 < first.position <= second.position
    with db.connect() as c:
        ids = [r[0] for r in c.execute("SELECT id FROM notes WHERE id > 5 ORDER BY id")]
        assert ids == [13, 14]
        assert c.execute("SELECT title FROM items WHERE id = 1").fetchone() == ("item 1",)


async def test_a_write_stream_refuses_a_message_whole_and_goes_on(
    db: Any, wrapper: Any, tmp_path: Path
) -> None:
    """WriteStream authenticates every request of a message as Write would:
    a request for another tenant's table, or one whose MAC does not verify,
    refuses its whole message (every result carries the kind, none of its
    requests runs), and the call goes on to answer the next message."""
    db.execute(TWO_TENANTS_SCHEMA)
    proc, files = two_tenants(wrapper, tmp_path)
    login = proc.hello(files["other"], "other")

    def write(table: str, key: int, body: str) -> pb.WriteRequest:
        return signed_write(login, "other", table, key, body)

    forged = write("public.notes", 11, "forged")
    forged.mac = b"\0" * 32
    messages = [
        pb.WriteStreamRequest(
            call_id=7, requests=[write("public.notes", 10, "mine"), write("public.items", 1, "x")]
        ),
        pb.WriteStreamRequest(call_id=8, requests=[write("public.notes", 12, "x"), forged]),
        pb.WriteStreamRequest(
            call_id=9, requests=[write("public.notes", 13, "a"), write("public.notes", 14, "b")]
        ),
    ]
    with proc.channel() as ch:
        stub = pb_grpc.WrapperServiceStub(ch)
        answers = {a.call_id: list(a.results) for a in stub.WriteStream(iter(messages), timeout=30)}
    assert sorted(answers) == [7, 8, 9]
    assert [r.error_kind for r in answers[7]] == ["wrong-tenant"] * 2
    assert [r.error_kind for r in answers[8]] == ["bad-mac"] * 2
    assert "MAC does not verify" in answers[8][0].error_message
    assert [r.HasField("response") for r in answers[9]] == [True, True]
    first, second = (r.response for r in answers[9])
    assert first.event_id != second.event_id and 0 < first.position <= second.position
    with db.connect() as c:
        ids = [r[0] for r in c.execute("SELECT id FROM notes WHERE id > 5 ORDER BY id")]
        assert ids == [13, 14]
        assert c.execute("SELECT title FROM items WHERE id = 1").fetchone() == ("item 1",)


async def test_mutual_tls_maps_certificates_to_tenants(
    db: Any, wrapper: Any, tmp_path: Path, certs: CertPaths
) -> None:
    db.execute(TWO_TENANTS_SCHEMA)
    proc, files = two_tenants(
        wrapper, tmp_path, identities=True, tls={"client_ca_file": str(certs.ca_cert)}
    )
    acme_cert, acme_key = certs.clients["acme-app"]
    other_cert, other_key = certs.clients["other-app"]
    async with driver_for(
        proc, files["acme"], tenant="acme", tls_cert_file=acme_cert, tls_key_file=acme_key
    ) as driver:
        await driver.wait_ready(timeout=30)
        assert driver.get("items", 1) == {"id": 1, "title": "item 1"}
    # The right secret with the other tenant's certificate is denied.
    async with driver_for(
        proc, files["acme"], tenant="acme", tls_cert_file=other_cert, tls_key_file=other_key
    ) as driver:
        with pytest.raises(TenantDeniedError, match="belongs to tenant 'other'"):
            await driver.wait_ready(timeout=30)
    # No client certificate: the TLS handshake itself fails, for good; the
    # driver says why at once instead of retrying (tests/integration/test_tls_mismatch.py).
    async with driver_for(proc, files["acme"], tenant="acme") as driver:
        with pytest.raises(TlsMismatchError, match="requires a client certificate"):
            await driver.wait_ready(timeout=30)
        assert driver.stats()["ready"] is False


async def test_plaintext_needs_explicit_insecure_and_is_logged(
    db: Any, wrapper: Any, secret_file: Path
) -> None:
    db.execute(SCHEMA)
    tls = wrapper(TABLES_CONFIG)
    # A plaintext client gets nowhere with a TLS wrapper.
    with grpc.insecure_channel(tls.target) as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.WrapperServiceStub(ch).Health(pb.HealthRequest(), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "PLAINTEXT" not in tls.log_tail(10**7)
    plain = wrapper(TABLES_CONFIG, server={"insecure": True})
    assert "serving gRPC in PLAINTEXT" in plain.log_tail(10**7)
    async with driver_for(plain, secret_file) as driver:
        await driver.wait_ready(timeout=30)


def test_failed_authentications_are_rate_limited(
    db: Any, wrapper: Any, secret_file: Path, tmp_path: Path
) -> None:
    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG, server={"auth_failures_per_minute": 3})
    wrong = tenant_files(tmp_path, "wrong")["wrong"]
    codes = []
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as err:
            authenticate(proc.channel(), wrong)
        codes.append(err.value.code())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3
    with pytest.raises(grpc.RpcError) as err:
        authenticate(proc.channel(), secret_file)  # the right secret, from the same address
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many failed authentications from 127.0.0.1" in (err.value.details() or "")


def test_random_handshake_bytes_get_typed_refusals(db: Any, wrapper: Any) -> None:
    """Garbage as ChallengeRequest and HelloRequest: every call ends in a gRPC
    status of its own, and the wrapper keeps serving."""
    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG, server={"auth_failures_per_minute": 10**6})
    rng = random.Random(5)
    seen = set()
    with proc.channel() as ch:
        for method in ("Challenge", "Hello"):
            call = ch.unary_unary(
                f"/prism.fabric.v1.WrapperService/{method}",
                request_serializer=None,
                response_deserializer=None,
            )
            valid = pb.HelloRequest(
                protocol_version=PROTOCOL_VERSION,
                tenant_id="acme",
                client_nonce=b"c" * 16,
                server_nonce=b"s" * 32,
                proof=b"p" * 32,
            ).SerializeToString()
            for i in range(60):
                if i % 2:
                    data = bytearray(valid)
                    for _ in range(rng.randint(1, 4)):
                        data[rng.randrange(len(data))] = rng.randrange(256)
                    body = bytes(data)
                else:
                    body = rng.randbytes(rng.randint(0, 80))
                try:
                    call(body, timeout=5)
                except grpc.RpcError as exc:
                    seen.add(exc.code())
    assert seen <= {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INTERNAL,  # bytes that do not parse as the request
    }, seen
    assert grpc.StatusCode.UNAUTHENTICATED in seen
    assert proc.health().status == "SERVING"


def rotate_keys(proc: WrapperProcess) -> str:
    r = run_cli("rotate-keys", "--config", str(proc.config_path))
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


async def test_rotate_keys_drivers_follow_without_reconnecting(
    db: Any, wrapper: Any, secret_file: Path
) -> None:
    db.execute(SCHEMA)
    before, after = _embeddings(2)
    db.execute("INSERT INTO items (id, title, embedding) VALUES (800, 'before', %s)", (before,))
    proc = wrapper(TABLES_CONFIG)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        assert driver.stats()["key_epoch"] == 1
        assert rotate_keys(proc).strip() == "tenant acme: key epoch 2"
        db.execute(
            "INSERT INTO items (id, title, embedding) VALUES (900, 'after rotation', %s)", (after,)
        )
        for _ in range(200):
            if driver.get("items", 900) is not None and driver.stats()["key_epoch"] == 2:
                break
            await asyncio.sleep(0.05)
        stats = driver.stats()
        assert driver.get("items", 900)["title"] == "after rotation"  # type: ignore[index]
        assert stats["key_epoch"] == 2 and stats["key_rotations"] == 1
        assert stats["reconnects"] == 0 and stats["frames_rejected"] == 0
        # The index stays in epoch 1's sealed space; the row sealed under
        # epoch 2 is carried into it and found by its own vector.
        await _finds_itself(driver, {800: before, 900: after})
        # A new driver learns the current epoch from Hello.
        async with driver_for(proc, secret_file) as late:
            await late.wait_ready(timeout=30)
            assert late.stats()["key_epoch"] == 2


@pytest.mark.slow
async def test_keys_rotate_under_continuous_writes(
    db: Any, wrapper: Any, secret_file: Path
) -> None:
    """Timed rotation every second and rotate-keys from the command line,
    while a randomized workload runs and the wrapper is killed once: the
    replica ends equal to the database and no frame is ever rejected."""
    db.execute(SCHEMA)
    wl = Workload(seed=31, alter_at=400)
    with db.connect() as c:
        wl.run(c, 100)
    proc = wrapper(
        TABLES_CONFIG, server={"key_rotation_seconds": 1.0}, store={"commit_interval_ms": 2.0}
    )
    driver = driver_for(proc, secret_file)
    await driver.start()
    await driver.wait_ready(timeout=60)
    bg = BackgroundWorkload(wl, db.connect, 600)
    followed_at_kill: int | None = None  # in-stream rotations followed before the kill
    epochs = set()
    while not bg.done.is_set():
        await asyncio.sleep(0.3)
        stats = driver.stats()
        epochs.add(stats["key_epoch"])
        if followed_at_kill is None and stats["key_rotations"] >= 1:
            await asyncio.to_thread(rotate_keys, proc)
            proc.kill9()
            await asyncio.to_thread(proc.start)
            followed_at_kill = stats["key_rotations"]
        elif followed_at_kill is not None and stats["key_rotations"] >= followed_at_kill + 2:
            bg.faulted.set()  # two more timed rotations followed after the restart
    bg.join()
    with db.connect() as c:
        await wait_consistent(driver, c, KEYS, timeout=90)
    stats = driver.stats()
    await driver.close()
    assert followed_at_kill is not None and bg.faulted.is_set()
    # A timed rotation, rotate-keys, and timed ones after the restart.
    assert stats["key_epoch"] >= 4, epochs
    assert stats["key_rotations"] >= 3 and stats["reconnects"] >= 1
    assert stats["frames_rejected"] == 0


async def test_secret_rotation_with_an_overlap_window(
    db: Any, wrapper: Any, tmp_path: Path
) -> None:
    """The tenant's new secret is listed first, the old one is accepted until
    old_secrets_until. A driver whose file is updated within the window moves
    to the new secret at its next reconnect; one left on the old secret is
    cut off at the deadline with a clear, permanent error."""
    db.execute(SCHEMA)
    files = tenant_files(tmp_path, "new", "old", "updated")
    (tmp_path / "updated.secret").write_bytes((tmp_path / "old.secret").read_bytes())
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)
    proc = wrapper(
        TABLES_CONFIG,
        tenants=[
            {
                "id": "acme",
                "secret_files": [str(files["new"]), str(files["old"])],
                "old_secrets_until": deadline.isoformat(),
            }
        ],
    )
    async with (
        driver_for(proc, files["new"]) as fresh,
        driver_for(proc, files["old"]) as stale,
        driver_for(proc, files["updated"]) as moving,
    ):
        for d in (fresh, stale, moving):
            await d.wait_ready(timeout=30)
        assert "authenticated with a retiring secret" in proc.log_tail(10**7)
        # The operator hands the new secret to one app before the deadline.
        tmp = tmp_path / "updated.tmp"
        tmp.write_bytes(files["new"].read_bytes())
        tmp.chmod(0o600)
        tmp.replace(files["updated"])
        await asyncio.sleep(max(0.0, (deadline - dt.datetime.now(dt.UTC)).total_seconds()) + 2)
        with pytest.raises(SecretRetiredError, match="retired"):
            await stale.wait_for(10**9, timeout=30)
        (vec,) = _embeddings(1)
        db.execute(
            "INSERT INTO items (id, title, embedding) VALUES (901, 'after retirement', %s)",
            (vec,),
        )
        for _ in range(200):
            if moving.get("items", 901) and fresh.get("items", 901):
                break
            await asyncio.sleep(0.05)
        assert moving.get("items", 901) is not None and fresh.get("items", 901) is not None
        assert moving.stats()["reconnects"] >= 1 and moving.stats()["bootstraps"] == 1
        assert fresh.stats()["reconnects"] == 0
        # `moving` kept the index it built under the old secret: the row
        # sealed under the new one is carried into that space, not misread.
        for d in (moving, fresh):
            await _finds_itself(d, {901: vec})


def _embeddings(n: int) -> list[list[float]]:
    rng = random.Random(n)
    return [[rng.uniform(-1, 1) for _ in range(VEC_DIM)] for _ in range(n)]


async def _finds_itself(driver: Any, rows: dict[int, list[float]]) -> None:
    for row_id, vec in rows.items():
        best = (await driver.query(embedding=vec, top_k=1))[0]
        assert best.row_id == row_id and best.score == pytest.approx(1.0, abs=1e-5)


async def test_unknown_tenant_and_wrong_secret_errors_are_distinct(
    db: Any, wrapper: Any, secret_file: Path, tmp_path: Path
) -> None:
    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG)
    async with driver_for(proc, secret_file, tenant="nobody") as d:
        with pytest.raises(UnknownTenantError, match="unknown tenant 'nobody'"):
            await d.wait_ready(timeout=20)
    wrong = tenant_files(tmp_path, "wrong")["wrong"]
    async with driver_for(proc, wrong) as d:
        with pytest.raises(AuthenticationError, match="does not match the secret") as err:
            await d.wait_ready(timeout=20)
        assert not isinstance(err.value, UnknownTenantError | SecretRetiredError)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prism.wrapper.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gen_secret_writes_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "t.secret"
    r = run_cli("gen-secret", str(path))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(load_secret(path)) == 64
    r = run_cli("gen-secret", str(path))
    assert r.returncode == 2 and "already exists" in r.stderr


def test_secret_files_others_can_read_are_refused_by_check(
    db: Any, wrapper: Any, secret_file: Path
) -> None:
    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG, start=False)
    secret_file.chmod(0o644)
    r = proc.check()
    assert r.returncode == 1
    assert f"secret file {secret_file} is accessible by group or others" in r.stdout
    assert f"chmod 600 {secret_file}" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "prism.wrapper.cli", "run", "--config", str(proc.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and f"chmod 600 {secret_file}" in r.stderr


def test_gen_certs_makes_a_ca_server_and_client_certificates(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    r = run_cli("gen-certs", str(out), "--host", "db.internal", "--client", "shop-app")
    assert r.returncode == 0, r.stderr
    assert "identity 'shop-app'" in r.stdout
    for key in ("ca.key", "server.key", "client-shop-app.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    client = x509.load_pem_x509_certificate((out / "client-shop-app.pem").read_bytes())
    assert server.issuer == ca.subject and client.issuer == ca.subject
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "db.internal" in sans.get_values_for_type(x509.DNSName)
    cn = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "shop-app"
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    assert server.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    r = run_cli("gen-certs", str(out), "--client", "../evil")
    assert r.returncode == 2 and "not a usable client name" in r.stderr


def test_secret_value_never_crosses_the_wire(db: Any, wrapper: Any, secret_file: Path) -> None:
    """The handshake carries proofs, never the secret: nothing the driver
    sends in Challenge and Hello contains it or its hex."""
    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG)
    secret = load_secret(secret_file)
    with proc.channel() as ch:
        stub = pb_grpc.WrapperServiceStub(ch)
        server_nonce = stub.Challenge(
            pb.ChallengeRequest(protocol_version=PROTOCOL_VERSION, tenant_id="acme"), timeout=5
        ).server_nonce
        mine = os.urandom(32)
        request = pb.HelloRequest(
            protocol_version=PROTOCOL_VERSION,
            tenant_id="acme",
            client_nonce=mine,
            server_nonce=server_nonce,
            proof=client_proof(secret, "acme", server_nonce, mine),
        )
        hello = stub.Hello(request, timeout=5)
    sent = request.SerializeToString()
    assert secret not in sent and bytes.fromhex(secret.decode()) not in sent
    assert hello.session and secret not in hello.SerializeToString()


async def test_raw_embeddings_can_stay_off_the_app_node(
    db: Any, wrapper: Any, secret_file: Path
) -> None:
    """With vector_in_rows = false the driver's rows lack the vector column:
    the app node holds the embeddings only in the tenant's keyed space, and
    similarity search still finds the row."""
    db.execute(SCHEMA)
    rng = random.Random(11)
    vectors = {i: [rng.uniform(-1, 1) for _ in range(8)] for i in range(1, 30)}
    with db.connect() as c:
        for i, v in vectors.items():
            c.execute(
                "INSERT INTO items (id, title, embedding) VALUES (%s, %s, %s)", (i, f"t{i}", v)
            )
    tables = [dict(TABLES_CONFIG[0], vector_in_rows=False)]
    proc = wrapper(tables)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        row = driver.get("items", 5)
        assert row is not None and row["title"] == "t5" and "embedding" not in row
        assert all("embedding" not in driver.get("items", i) for i in vectors)
        [best] = await driver.query(embedding=vectors[5], top_k=1)
        assert best.row_id == 5 and best.score == pytest.approx(1.0, abs=1e-5)
        assert "embedding" not in best.row
