"""Secret files and HKDF key derivation (prism.fabric.keys)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prism.fabric.errors import SecretFileError
from prism.fabric.keys import (
    MIN_SECRET_BYTES,
    EpochKeys,
    derive_auth_key,
    derive_epoch_keys,
    derive_projection_seed,
    load_secret,
    new_projection_key,
    write_secret,
)

SECRET = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
PROJECTION_KEY = bytes(range(32))


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_write_then_load(tmp_path: Path) -> None:
    p = tmp_path / "tenant.secret"
    write_secret(p)
    assert p.stat().st_mode & 0o777 == 0o600
    text = p.read_text()
    assert text.endswith("\n") and len(text) == 65
    int(text, 16)
    assert load_secret(p) == text.strip().encode()
    assert len(load_secret(str(p))) == 64


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    p = _write(tmp_path / "s", SECRET)
    with pytest.raises(SecretFileError, match="already exists"):
        write_secret(p)
    assert p.read_bytes() == SECRET


def test_write_secrets_differ(tmp_path: Path) -> None:
    write_secret(tmp_path / "a")
    write_secret(tmp_path / "b")
    assert load_secret(tmp_path / "a") != load_secret(tmp_path / "b")


def test_load_strips_whitespace(tmp_path: Path) -> None:
    p = _write(tmp_path / "s", b"  " + SECRET + b"\r\n\n")
    assert load_secret(p) == SECRET


def test_missing_file_names_path(tmp_path: Path) -> None:
    p = tmp_path / "nope"
    with pytest.raises(SecretFileError, match="does not exist") as ei:
        load_secret(p)
    assert str(p) in str(ei.value)
    assert not ei.value.retriable


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610])
def test_group_or_other_access_refused(tmp_path: Path, mode: int) -> None:
    p = _write(tmp_path / "s", SECRET, mode)
    with pytest.raises(SecretFileError) as ei:
        load_secret(p)
    assert f"chmod 600 {p}" in str(ei.value)


def test_owner_only_modes_accepted(tmp_path: Path) -> None:
    assert load_secret(_write(tmp_path / "s", SECRET, 0o400)) == SECRET


def test_unreadable_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _write(tmp_path / "s", SECRET, 0o000)
    if os.geteuid() == 0:
        # root opens any file; make open() fail as it does for everyone else
        def denied(*args: object, **kw: object) -> int:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("prism.fabric.keys.os.open", denied)
    with pytest.raises(SecretFileError, match=f"{p}.*cannot be opened"):
        load_secret(p)


def test_directory_refused(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match=str(d)):
        load_secret(d)


def test_short_secret_refused(tmp_path: Path) -> None:
    p = _write(tmp_path / "s", b"a" * (MIN_SECRET_BYTES - 1) + b"\n   \n")
    with pytest.raises(SecretFileError, match="31 bytes") as ei:
        load_secret(p)
    assert str(p) in str(ei.value)
    assert load_secret(_write(tmp_path / "t", b"a" * MIN_SECRET_BYTES + b"\n")) == b"a" * 32


def test_epoch_keys_are_32_bytes_and_separated() -> None:
    k = derive_epoch_keys(SECRET, "acme", 1)
    assert isinstance(k, EpochKeys)
    assert (k.tenant_id, k.epoch) == ("acme", 1)
    material = [
        k.matrix_seed,
        k.hmac_key,
        k.aead_key,
        derive_auth_key(SECRET, "acme"),
        derive_projection_seed(PROJECTION_KEY, "acme"),
        # Same IKM, different purpose: still separated.
        derive_projection_seed(SECRET, "acme"),
    ]
    assert all(isinstance(m, bytes) and len(m) == 32 for m in material)
    assert len(set(material)) == len(material)


def test_derivation_is_deterministic_and_domain_separated() -> None:
    k = derive_epoch_keys(SECRET, "acme", 1)
    assert derive_epoch_keys(bytes(SECRET), "acme", 1) == k
    others = [
        derive_epoch_keys(SECRET, "acme", 2),
        derive_epoch_keys(SECRET, "acme2", 1),
        derive_epoch_keys(SECRET[:-1] + b"0", "acme", 1),
    ]
    for o in others:
        assert o.hmac_key != k.hmac_key and o.matrix_seed != k.matrix_seed
    seed = derive_projection_seed(PROJECTION_KEY, "acme")
    assert derive_projection_seed(bytes(PROJECTION_KEY), "acme") == seed
    assert derive_projection_seed(PROJECTION_KEY, "acme2") != seed


def test_golden_derivation() -> None:
    # Wrapper and driver of different releases must derive the same keys.
    k = derive_epoch_keys(b"x" * 32, "acme", 3)
    assert k.hmac_key.hex().startswith("c6f9d03eefd69bdec44aadf3f18383e4")
    assert k.matrix_seed.hex().startswith("c4c8e08a94592346496df876445cc3d8")
    seed = derive_projection_seed(b"x" * 32, "acme")
    assert seed.hex().startswith("c2af921148187e4b04afe5650186cb97")
    auth = derive_auth_key(b"x" * 32, "acme")
    assert auth.hex().startswith("058fc195edf28ab25fc54d26a322787e")


def test_repr_hides_key_material() -> None:
    k = derive_epoch_keys(SECRET, "acme", 1)
    assert k.hmac_key.hex() not in repr(k) and "acme" in repr(k)


def test_negative_epoch_rejected() -> None:
    with pytest.raises(ValueError):
        derive_epoch_keys(SECRET, "acme", -1)


def test_auth_key_is_independent_of_epoch() -> None:
    auth = derive_auth_key(SECRET, "acme")
    assert isinstance(auth, bytes) and len(auth) == 32
    # No epoch goes in, and no epoch's key comes out.
    for epoch in (0, 1, 2, 2**32 - 1):
        k = derive_epoch_keys(SECRET, "acme", epoch)
        assert auth not in (k.matrix_seed, k.hmac_key, k.aead_key)
    derive_auth_key.cache_clear()
    assert derive_auth_key(bytes(SECRET), "acme") == auth


@pytest.mark.parametrize(
    ("secret", "tenant"),
    [(SECRET[:-1] + b"0", "acme"), (SECRET, "acme2"), (SECRET, "acm"), (SECRET, "")],
)
def test_auth_key_differs_per_secret_and_tenant(secret: bytes, tenant: str) -> None:
    assert derive_auth_key(secret, tenant) != derive_auth_key(SECRET, "acme")


def test_projection_seed_depends_on_projection_key_not_secret() -> None:
    seed = derive_projection_seed(PROJECTION_KEY, "acme")
    assert derive_projection_seed(PROJECTION_KEY[:-1] + b"\xff", "acme") != seed
    assert derive_projection_seed(new_projection_key(), "acme") != seed
    # The tenant secret is not an input: no key derived from it equals the seed,
    # and rotating the secret (new epoch keys) leaves the seed as it is.
    for secret in (SECRET, b"y" * 32):
        k = derive_epoch_keys(secret, "acme", 1)
        assert seed not in (k.matrix_seed, k.hmac_key, k.aead_key, derive_auth_key(secret, "acme"))
    derive_projection_seed.cache_clear()
    assert derive_projection_seed(PROJECTION_KEY, "acme") == seed


def test_new_projection_key_is_random_32_bytes() -> None:
    keys = {new_projection_key() for _ in range(8)}
    assert len(keys) == 8
    assert all(isinstance(k, bytes) and len(k) == 32 for k in keys)
