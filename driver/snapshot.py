"""Warm-restart snapshots: the driver's replica on disk, sealed, in bulk.

Beside the replica (driver/replica.py); driver/warmstart.py decides when to
write one and whether a loaded one may be served. A snapshot holds what the
replica shows at one transaction boundary: each table's rows as the
row-codec bytes the frames carried, the index's grid vectors (int16, which
holds them exactly) and its partitioning, plus the stream identity, the
position and the tables' shape as Hello described them, and the sealed
space each index's vectors are in (driver/space.py: a key epoch and a tag
of its matrix, checked against the secret that reads the file). Loading one is a
few bulk operations per block of rows (numpy over the length arrays, one
dict update), never a decode or an unpickling per row: about 100k rows in
well under a second.

The file:

    magic "PRSMSNP" 0x01 | u32 header length | header (JSON, UTF-8)
    blocks: u64 length | AES-256-GCM ciphertext and tag

Every block is sealed with a key of this file: HKDF-SHA256 over the
tenant's snapshot key (prism.fabric.keys.derive_snapshot_key, its own HKDF
label under the tenant secret) with the header's random 32-byte salt. Nonce:
the block's number. Associated data: SHA-256 of magic and header, the
block's number and whether it is the last, so a changed header, a block
moved, dropped, swapped in from another file or cut off at the end fails
authentication, as does a file written under another secret. The header is
plaintext but authenticated through every block; the rows and vectors are
also confidential at rest. AES-GCM costs about what an HMAC-SHA256 would
here (about 1.5 GB/s each on this machine) and gives both.

Block contents (little-endian; the first u32 is the block's kind):

    rows (1):      u32 kind, table, count, vectors | u32 key lengths[count] |
                   u32 payload lengths[count] | i16 grid[vectors x dim] |
                   u8 has-vector[count] | keys | payloads
    partition (2): u32 kind, table, r, k | f32 basis[dim x r] |
                   f32 centroids[k x r]
    end (3):       u32 kind, 0, 0, 0 (always the last block)

Writing: a temporary file in the same directory, fsync, rename over the
old snapshot, fsync of the directory; a crash leaves the old snapshot or the
new one, never a mix.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from prism.driver.errors import DriverError
from prism.driver.index import IndexParams, Partitioning, VectorIndex
from prism.driver.replica import Replica, TableReplica
from prism.driver.schema import TableInfo
from prism.driver.space import space_from_record, space_record
from prism.fabric.keys import derive_snapshot_key
from prism.fabric.sealing import Sealer

MAGIC = b"PRSMSNP\x01"
# 2: each table's header records its index's sealed space (driver/space.py);
# 1 (read still): vectors unsealed. A driver that reads only 1 refuses 2,
# whose vectors it would take for unsealed ones.
FORMAT = 2
READ_FORMATS = frozenset({1, 2})
SUFFIX = ".prism-snapshot"
ROWS_PER_BLOCK = 4096  # ~10 MB blocks: each encrypt holds the GIL ~5 ms
_MAX_HEADER = 16 << 20
_MAX_BLOCK = 1 << 31
_FILE_KEY_INFO = b"prism/snapshot-file/v1"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_BLOCK_HEAD = struct.Struct("<IIII")
_ROWS, _PARTITION, _END = 1, 2, 3


class SnapshotError(DriverError):
    """A snapshot file cannot be used (unreadable, malformed, failing its
    integrity check, or of another tenant). The driver discards it and
    bootstraps; this never reaches a caller."""


@dataclass
class TableState:
    """One table of a snapshot, taken from the live replica."""

    info: TableInfo
    keys: list[str]
    payloads: list[bytes]
    mask: np.ndarray  # bool per row: the index holds a vector for it
    grid: np.ndarray  # int16 (mask.sum(), dim): those rows' grid vectors, in row order
    partitioning: Partitioning | None
    # The sealed space the grid vectors are in (prism.driver.space.space_record;
    # None: unsealed), when the index has one yet (space_set). A format 1
    # snapshot's are unsealed.
    space: dict[str, object] | None = None
    space_set: bool = False


@dataclass
class Snapshot:
    """What a snapshot file holds (written) or held (read)."""

    tenant_id: str
    stream_id: str
    position: int
    head: int
    projection_tag: bytes  # binds the vectors to the projection key they were made under
    index_params: IndexParams
    tables: dict[str, TableState]
    created_us: int = 0


@dataclass
class Restored:
    """A snapshot read and verified: the replica it describes, not yet served."""

    tenant_id: str
    stream_id: str
    position: int
    head: int
    projection_tag: bytes
    tables: dict[str, TableInfo]
    replica: Replica
    rows: int
    bytes: int


def snapshot_path(directory: str | os.PathLike[str], tenant_id: str) -> Path:
    """The tenant's snapshot file in `directory` (one per tenant)."""
    safe = all(c.isalnum() or c in "._-" for c in tenant_id) and not tenant_id.startswith(".")
    name = tenant_id if safe else hashlib.sha256(tenant_id.encode()).hexdigest()[:32]
    return Path(directory) / f"{name}{SUFFIX}"


def projection_tag(secret: bytes, tenant_id: str, projection_key: bytes) -> bytes:
    """A keyed digest of the tenant's projection key: a snapshot whose
    vectors were projected under another key is refused."""
    key = derive_snapshot_key(secret, tenant_id)
    return hmac.digest(key, b"prism/snapshot/projection-key:" + projection_key, "sha256")


def capture(
    replica: Replica,
    infos: Mapping[str, TableInfo],
    *,
    tenant_id: str,
    stream_id: str,
    position: int,
    head: int,
    projection_tag: bytes,
    index_params: IndexParams,
) -> Snapshot:
    """Take the replica's content, as it is now, into a Snapshot that no
    later apply changes (payloads are immutable bytes; vectors are copied).
    The caller keeps the replica still meanwhile."""
    tables = {}
    for name, t in replica.tables.items():
        info = infos.get(name)
        if info is None:
            raise SnapshotError(f"table {name} is in the replica but not in the schema")
        keys = list(t.payloads)
        payloads = list(t.payloads.values())
        space, space_set = None, False
        if t.index is not None:
            mask, grid = t.index.export_rows(keys)
            part = t.index.partitioning
            space, space_set = space_record(t.index), t.index.space_set
        else:
            mask, grid, part = np.zeros(len(keys), bool), np.zeros((0, 0), np.int16), None
        tables[name] = TableState(info, keys, payloads, mask, grid, part, space, space_set)
    return Snapshot(
        tenant_id=tenant_id,
        stream_id=stream_id,
        position=position,
        head=head,
        projection_tag=projection_tag,
        index_params=index_params,
        tables=tables,
        created_us=0,
    )


# -- writing ------------------------------------------------------------------


def _file_key(secret: bytes, tenant_id: str, salt: bytes) -> AESGCM:
    base = derive_snapshot_key(secret, tenant_id)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_FILE_KEY_INFO).derive(base)
    return AESGCM(key)


def _nonce(i: int) -> bytes:
    return i.to_bytes(12, "little")


def _aad(base: bytes, i: int, last: bool) -> bytes:
    return base + _U64.pack(i) + (b"\x01" if last else b"\x00")


def _info_json(info: TableInfo) -> dict[str, Any]:
    return asdict(info)


def _info_of(d: Mapping[str, Any]) -> TableInfo:
    return TableInfo(
        name=str(d["name"]),
        key_columns=tuple(d["key_columns"]),
        columns=tuple((str(c), str(t)) for c, t in d["columns"]),
        has_vectors=bool(d["has_vectors"]),
        vector_source=str(d["vector_source"]),
        text_columns=tuple(d["text_columns"]),
        source_dim=int(d["source_dim"]),
        vector_dim=int(d["vector_dim"]),
        writable=bool(d["writable"]),
        writable_columns=tuple(d["writable_columns"]),
    )


def _rows_blocks(no: int, t: TableState) -> Iterator[bytes]:
    """The rows blocks of one table, ROWS_PER_BLOCK rows each."""
    n = len(t.keys)
    vec_at = np.concatenate([[0], np.cumsum(t.mask, dtype=np.int64)])
    dim = t.grid.shape[1] if t.grid.ndim == 2 else 0
    for lo in range(0, n, ROWS_PER_BLOCK):
        hi = min(n, lo + ROWS_PER_BLOCK)
        keys = [k.encode("utf-8", "surrogatepass") for k in t.keys[lo:hi]]
        payloads = t.payloads[lo:hi]
        v0, v1 = int(vec_at[lo]), int(vec_at[hi])
        grid = t.grid[v0:v1] if dim else np.zeros((0, 0), np.int16)
        yield b"".join(
            (
                _BLOCK_HEAD.pack(_ROWS, no, hi - lo, v1 - v0),
                np.fromiter(map(len, keys), "<u4", hi - lo).tobytes(),
                np.fromiter(map(len, payloads), "<u4", hi - lo).tobytes(),
                np.ascontiguousarray(grid, "<i2").tobytes(),
                t.mask[lo:hi].astype(np.uint8).tobytes(),
                b"".join(keys),
                b"".join(payloads),
            )
        )


def _blocks(snap: Snapshot) -> tuple[int, Iterator[bytes]]:
    """(how many blocks, the blocks' plaintexts)."""
    count = 1  # the end block
    for t in snap.tables.values():
        count += -(-len(t.keys) // ROWS_PER_BLOCK) + (t.partitioning is not None)

    def gen() -> Iterator[bytes]:
        for no, t in enumerate(snap.tables.values()):
            yield from _rows_blocks(no, t)
            part = t.partitioning
            if part is not None:
                r = part.basis.shape[1]
                k = part.centroids.shape[0]
                yield b"".join(
                    (
                        _BLOCK_HEAD.pack(_PARTITION, no, r, k),
                        np.ascontiguousarray(part.basis, "<f4").tobytes(),
                        np.ascontiguousarray(part.centroids, "<f4").tobytes(),
                    )
                )
        yield _BLOCK_HEAD.pack(_END, 0, 0, 0)

    return count, gen()


def write_snapshot(path: Path, snap: Snapshot, secret: bytes) -> int:
    """Write `snap` to `path` atomically and durably; returns its size in
    bytes. Raises OSError when the file system refuses."""
    salt = os.urandom(32)
    aead = _file_key(secret, snap.tenant_id, salt)
    count, blocks = _blocks(snap)
    header = json.dumps(
        {
            "format": FORMAT,
            "tenant_id": snap.tenant_id,
            "stream_id": snap.stream_id,
            "position": snap.position,
            "head": snap.head,
            "created_us": snap.created_us,
            "salt": salt.hex(),
            "blocks": count,
            "projection_tag": snap.projection_tag.hex(),
            "index_params": asdict(snap.index_params),
            "tables": [
                {
                    "info": _info_json(t.info),
                    "rows": len(t.keys),
                    "vectors": int(t.mask.sum()),
                    # Absent: the index has no space yet (it takes the next
                    # frame's); null: unsealed.
                    **({"space": t.space} if t.space_set else {}),
                }
                for t in snap.tables.values()
            ],
        },
        separators=(",", ":"),
    ).encode("utf-8")
    base = hashlib.sha256(MAGIC + header).digest()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    try:
        with os.fdopen(fd, "wb", buffering=0) as fh:
            fh.write(MAGIC + _U32.pack(len(header)) + header)
            size += len(MAGIC) + 4 + len(header)
            for i, plain in enumerate(blocks):
                sealed = aead.encrypt(_nonce(i), plain, _aad(base, i, i == count - 1))
                fh.write(_U64.pack(len(sealed)))
                fh.write(sealed)
                size += 8 + len(sealed)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return size


# -- reading ------------------------------------------------------------------


def _read_exact(fh: Any, n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise SnapshotError(f"snapshot ends inside its {what}")
    return data


def _split(block: bytes, lengths: np.ndarray, at: int, what: str) -> tuple[list[bytes], int]:
    """The entries of `lengths` bytes each, from `at` on; and the offset after them."""
    ends = np.cumsum(lengths, dtype=np.int64) + at
    if len(ends) and int(ends[-1]) > len(block):
        raise SnapshotError(f"snapshot {what} run past their block")
    starts = (ends - lengths).tolist()
    return [block[a:b] for a, b in zip(starts, ends.tolist(), strict=True)], (
        int(ends[-1]) if len(ends) else at
    )


class _Loader:
    """Builds a Replica from verified blocks, table by table: payloads
    straight into the table's dict, grid vectors straight into the index's
    slab (sized from the header's counts), no intermediate copies."""

    def __init__(
        self,
        infos: list[TableInfo],
        counts: list[tuple[int, int]],
        params: IndexParams,
        spaces: list[tuple[bool, Sealer | None]],
    ) -> None:
        self.infos = infos
        self.params = params
        self.spaces = spaces
        self.tables = [TableReplica(i.name, i.key_columns, i.text_columns) for i in infos]
        self.vec_keys: list[list[str]] = [[] for _ in infos]
        self.grids = [
            np.empty((max(v, 16), i.vector_dim), np.float32) if i.has_vectors else None
            for i, (_, v) in zip(infos, counts, strict=True)
        ]
        self.parts: list[Partitioning | None] = [None for _ in infos]

    def block(self, b: bytes) -> bool:
        """Take one block; True for the end block."""
        if len(b) < _BLOCK_HEAD.size:
            raise SnapshotError("snapshot block shorter than its head")
        kind, no, a, c = _BLOCK_HEAD.unpack_from(b)
        if kind == _END:
            return True
        if not 0 <= no < len(self.infos):
            raise SnapshotError(f"snapshot block names table {no} of {len(self.infos)}")
        info = self.infos[no]
        dim = info.vector_dim if info.has_vectors else 0
        if kind == _ROWS:
            self._rows(no, b, a, c, dim)
        elif kind == _PARTITION:
            if not dim or not 1 <= a <= dim or c < 1:
                raise SnapshotError(f"snapshot partition of {info.name} has shape ({a}, {c})")
            at = _BLOCK_HEAD.size
            if len(b) != at + 4 * (dim * a + c * a):
                raise SnapshotError(f"snapshot partition of {info.name} has the wrong size")
            basis = np.frombuffer(b, "<f4", dim * a, at).reshape(dim, a).astype(np.float32)
            cents = np.frombuffer(b, "<f4", c * a, at + 4 * dim * a).reshape(c, a)
            self.parts[no] = Partitioning(basis, cents.astype(np.float32))
        else:
            raise SnapshotError(f"snapshot block of unknown kind {kind}")
        return False

    def _rows(self, no: int, b: bytes, count: int, nvec: int, dim: int) -> None:
        at = _BLOCK_HEAD.size
        need = at + 8 * count + 2 * nvec * dim + count
        if nvec > count or (nvec and not dim) or len(b) < need:
            raise SnapshotError("snapshot rows block is shorter than its arrays")
        key_len = np.frombuffer(b, "<u4", count, at).astype(np.int64)
        pay_len = np.frombuffer(b, "<u4", count, at + 4 * count).astype(np.int64)
        at += 8 * count
        grid = np.frombuffer(b, "<i2", nvec * dim, at).reshape(nvec, dim)
        at += 2 * nvec * dim
        mask = np.frombuffer(b, np.uint8, count, at)
        at += count
        if int(mask.sum()) != nvec or (count and int(mask.max()) > 1):
            raise SnapshotError("snapshot rows block: vector flags disagree with its count")
        raw_keys, at = _split(b, key_len, at, "keys")
        payloads, at = _split(b, pay_len, at, "payloads")
        if at != len(b):
            raise SnapshotError("snapshot rows block has bytes after its payloads")
        try:
            keys = [k.decode("utf-8", "surrogatepass") for k in raw_keys]
        except UnicodeDecodeError as exc:
            raise SnapshotError(f"snapshot key is not UTF-8: {exc}") from None
        t = self.tables[no]
        before = len(t.payloads)
        t.payloads.update(zip(keys, payloads, strict=True))
        if len(t.payloads) != before + count:
            raise SnapshotError(f"snapshot repeats a key of {t.name}")
        if nvec:
            held = self.vec_keys[no]
            slab = self.grids[no]
            if slab is None or len(held) + nvec > len(slab):
                raise SnapshotError(f"snapshot of {t.name} holds more vectors than its header")
            slab[len(held) : len(held) + nvec] = grid
            held.extend(itertools.compress(keys, mask.tolist()))

    def replica(self) -> Replica:
        for info, t, keys, slab, part, space in zip(
            self.infos,
            self.tables,
            self.vec_keys,
            self.grids,
            self.parts,
            self.spaces,
            strict=True,
        ):
            if slab is None:
                continue
            idx = VectorIndex(info.vector_dim, capacity=16, params=self.params)
            idx.space_set, idx.space = space
            # No training while the driver starts: it ran beside the load and
            # the first Hello, whose keyed matrices (a QR each) then waited on
            # the same BLAS, 2 s apiece (benchmark/warm_restart.py). The
            # driver lets it start once it serves the replica, as after a
            # bootstrap (VectorIndex.hold_training).
            idx.hold_training(True)
            try:
                idx.load_rows(keys, slab, part)
            except ValueError as exc:
                raise SnapshotError(f"snapshot index of {info.name}: {exc}") from None
            t.index = idx
        return Replica({t.name: t for t in self.tables})


def _space(
    fmt: int, table: dict[str, Any], info: TableInfo, secret: bytes, tenant_id: str
) -> tuple[bool, Sealer | None]:
    """(whether the index has a space, its Sealer or None for unsealed) of
    one table of a snapshot's header. SnapshotError when the space is one
    `secret` does not derive."""
    if not info.has_vectors:
        return False, None
    if fmt < 2:
        return True, None  # format 1 kept unsealed vectors
    if "space" not in table:
        return False, None
    try:
        return True, space_from_record(table["space"], secret, tenant_id, info.vector_dim)
    except ValueError as exc:
        raise SnapshotError(f"snapshot's index space cannot be used: {exc}") from None


def read_snapshot(path: Path, secret: bytes, tenant_id: str, params: IndexParams) -> Restored:
    """Read, verify and build the replica a snapshot file describes. Each
    block is authenticated before it is parsed. SnapshotError when the file
    cannot be used (FileNotFoundError passes through: there is none)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115  # closed below
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SnapshotError(f"cannot open snapshot {path}: {exc.strerror}") from None
    with fh:
        try:
            return _read(fh, path, secret, tenant_id, params)
        except OSError as exc:
            raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror}") from None


def _read(fh: Any, path: Path, secret: bytes, tenant_id: str, params: IndexParams) -> Restored:
    if _read_exact(fh, len(MAGIC), "magic") != MAGIC:
        raise SnapshotError(f"{path} is not a prism snapshot of format {FORMAT}")
    (hlen,) = _U32.unpack(_read_exact(fh, 4, "header length"))
    if hlen > _MAX_HEADER:
        raise SnapshotError(f"snapshot header of {hlen} bytes is too large")
    header_bytes = _read_exact(fh, hlen, "header")
    try:
        header = json.loads(header_bytes)
        if header["format"] not in READ_FORMATS:
            raise SnapshotError(
                f"snapshot format {header['format']} is not one of {sorted(READ_FORMATS)}"
            )
        if header["tenant_id"] != tenant_id:
            raise SnapshotError(f"snapshot of tenant {header['tenant_id']!r}, not {tenant_id!r}")
        salt = bytes.fromhex(header["salt"])
        blocks = int(header["blocks"])
        infos = [_info_of(t["info"]) for t in header["tables"]]
        counts = [(int(t["rows"]), int(t["vectors"])) for t in header["tables"]]
        spaces = [
            _space(header["format"], t, i, secret, tenant_id)
            for t, i in zip(header["tables"], infos, strict=True)
        ]
        stream_id, position, head = (
            str(header["stream_id"]),
            int(header["position"]),
            int(header["head"]),
        )
        tag = bytes.fromhex(header["projection_tag"])
        saved_params = IndexParams(**header["index_params"])
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"snapshot header is malformed: {exc!r}") from None
    if len(salt) != 32 or blocks < 1:
        raise SnapshotError("snapshot header is malformed: salt or block count")
    aead = _file_key(secret, tenant_id, salt)
    base = hashlib.sha256(MAGIC + header_bytes).digest()
    # A partitioning trained under other parameters is dropped: the index
    # trains its own when it needs one.
    loader = _Loader(infos, counts, params, spaces)
    size = len(MAGIC) + 4 + hlen
    ended = False
    for i in range(blocks):
        (n,) = _U64.unpack(_read_exact(fh, 8, "block length"))
        if n > _MAX_BLOCK:
            raise SnapshotError(f"snapshot block of {n} bytes is too large")
        sealed = _read_exact(fh, n, "block")
        size += 8 + n
        last = i == blocks - 1
        try:
            plain = aead.decrypt(_nonce(i), sealed, _aad(base, i, last))
        except InvalidTag:
            raise SnapshotError(
                f"snapshot {path} fails its integrity check at block {i}: changed, cut, "
                "or written under another tenant secret"
            ) from None
        del sealed
        ended = loader.block(plain)
        if ended != last:
            raise SnapshotError("snapshot's end block is not its last")
    if fh.read(1):
        raise SnapshotError("snapshot has bytes after its last block")
    if saved_params != params:
        loader.parts = [None for _ in infos]
    replica = loader.replica()
    for info, (rows, vectors) in zip(infos, counts, strict=True):
        t = replica.tables[info.name]
        if len(t.payloads) != rows or (t.index is not None and len(t.index) != vectors):
            raise SnapshotError(f"snapshot of {info.name} holds other counts than its header")
    return Restored(
        tenant_id=tenant_id,
        stream_id=stream_id,
        position=position,
        head=head,
        projection_tag=tag,
        tables={i.name: i for i in infos},
        replica=replica,
        rows=sum(r for r, _ in counts),
        bytes=size,
    )
