"""The row log's native codec against its Python twin (wrapper/_logcodec.c,
wrapper/rowlog.py encode_py and LogView.rows_py): the same bytes written, the
same rows read back, clear errors for what it cannot take."""

from __future__ import annotations

import os
from itertools import repeat
from pathlib import Path

import pytest

import prism.wrapper.rowlog as rowlog
from prism.wrapper.store import Store, StoreReader

codec = rowlog._logcodec
if codec is None:  # the extension is built by the editable install (gcc, Python.h)
    pytest.fail("prism.wrapper._logcodec did not build", pytrace=False)

KEYS = ["[1]", '["é", 2]', "[3]", "[4]", "[5]"]
PAYLOADS: list[bytes | None] = [b"one", b"", None, os.urandom(5000), b"five"]
VECTORS: list[bytes | None] = [b"\x00" + bytes(8), None, None, bytes(1536), b"v"]
HIDDEN: list[bytes | None] = [None, b"h", None, b"", None]
OLDS: list[str | None] = [None, "[0]", None, None, "[ü]"]


@pytest.mark.parametrize("commits", [[10, 11, 12, 13, 14], repeat(99)], ids=["each", "one"])
def test_records_are_byte_for_byte_the_python_encoders(commits: object) -> None:
    c1 = list(commits) if isinstance(commits, list) else repeat(99)
    c2 = list(commits) if isinstance(commits, list) else repeat(99)
    got, lengths = codec.encode("public.t", KEYS, 7, PAYLOADS, VECTORS, HIDDEN, c1, 123456, OLDS)
    want, want_lengths = rowlog.encode_py(
        "public.t", KEYS, 7, PAYLOADS, VECTORS, HIDDEN, c2, 123456, OLDS
    )
    assert got == want
    assert lengths == want_lengths
    assert sum(lengths) == len(got)


def test_repeated_columns_and_an_empty_batch() -> None:
    got, lengths = codec.encode(
        "t", [], 1, [], repeat(None), repeat(None), repeat(1), 0, repeat(None)
    )
    assert (got, lengths) == (b"", [])
    got, _ = codec.encode(
        "t", ["[1]"], 1, [b"p"], repeat(None), repeat(None), repeat(5), 0, repeat(None)
    )
    want, _ = rowlog.encode_py("t", ["[1]"], 1, [b"p"], [None], [None], [5], 0, [None])
    assert got == want


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("keys", [1], "key must be str"),
        ("payloads", ["text"], "payload must be bytes or None"),
        ("vectors", [3.5], "vector must be bytes or None"),
        ("hidden", ["x"], "hidden value must be bytes or None"),
        ("old_keys", [b"[1]"], "old key must be str or None"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(column: str, value: list, message: str) -> None:
    args = {
        "keys": ["[1]"],
        "payloads": [b"p"],
        "vectors": [None],
        "hidden": [None],
        "old_keys": [None],
    }
    args[column] = value
    with pytest.raises(TypeError, match=message):
        codec.encode(
            "t",
            args["keys"],
            1,
            args["payloads"],
            args["vectors"],
            args["hidden"],
            [1],
            0,
            args["old_keys"],
        )


def test_a_column_shorter_than_the_keys_is_refused() -> None:
    with pytest.raises(ValueError, match="ran short"):
        codec.encode(
            "t", ["[1]", "[2]"], 1, [b"a", b"b"], [None], repeat(None), repeat(1), 0, repeat(None)
        )
    with pytest.raises(ValueError, match="fewer payloads"):
        codec.encode(
            "t", ["[1]", "[2]"], 1, [b"a"], repeat(None), repeat(None), repeat(1), 0, repeat(None)
        )


def test_a_damaged_length_is_an_error_not_a_crash() -> None:
    data, _ = codec.encode("t", ["[1]"], 1, [b"p"], [None], [None], [1], 0, [None])
    bad = (10).to_bytes(4, "little") + data[4:]
    with pytest.raises(ValueError, match="has length 10"):
        codec.rows(bad, "t", 0, 10, {}, {}, False)
    # A header whose field lengths run past the record.
    lying = bytearray(data)
    lying[44:48] = (10_000).to_bytes(4, "little")
    with pytest.raises(ValueError, match="shorter than its fields"):
        codec.rows(bytes(lying), "t", 0, 10, {"[1]": (1, 0, len(data), 0)}, {}, False)


def test_an_incomplete_record_at_the_end_of_a_buffer_is_left_for_the_next_read() -> None:
    data, lengths = codec.encode(
        "t", ["[1]", "[2]"], 1, [b"a", b"b"], [None, None], [None, None], [1, 1], 0, [None, None]
    )
    index = {"[1]": (1, 0, lengths[0], 0), "[2]": (2, lengths[0], lengths[1], 0)}
    rows, used = codec.rows(data[:-3], "t", 0, 2, index, {}, False)
    assert used == lengths[0]
    assert [r[0] for r in rows] == ["[1]"]


def test_both_readers_give_the_same_rows_of_a_view_the_writer_overtook(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3", "normal")
    store.reset("s1")
    with store.transaction() as txn:
        for i in range(300):
            txn.upsert("t", f"[{i}]", os.urandom(i), b"\x00" + bytes(8) if i % 2 else None, i)
        txn.upsert("u", "[1]", b"other table", None, 1)
        txn.delete("t", "[7]", 1)
    reader = StoreReader(store.path)
    reader.begin()
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"changed", None, 2)
        txn.delete("t", "[2]", 2)
        txn.upsert("t", "[new]", b"new", None, 2)
        txn.delete("t", "[7]", 2)
    view = reader._view
    assert view is not None
    for after in (0, 5, 150):
        for live_only in (False, True):
            native = list(view.rows("t", after, live_only))
            python = list(view.rows_py("t", after, live_only))
            assert native == python
            assert native, "the view holds rows"
    assert list(view.rows("t", 0, True))[1][:3] == ("[1]", "U", 2)
    reader.end()
    store.close()
