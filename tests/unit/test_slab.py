"""prism.driver.slab: growable arrays over reserved address space, and the
index's grid slab on one during a bulk load.

Residency is read from the kernel (mincore), so a test fails if the helper
thread did not fault pages in, or a release did not give them back."""

from __future__ import annotations

import ctypes
import mmap

import numpy as np
import pytest

from prism.driver import index as index_mod
from prism.driver import slab as slab_mod
from prism.driver.index import VectorIndex, normalize
from prism.driver.slab import Slab

DIM = 64
ROW = DIM * 4  # float32
PAGE = mmap.PAGESIZE
HUGE = 2 << 20  # a transparent huge page on x86-64

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def resident_pages(a: np.ndarray, start: int, end: int) -> int:
    """How many pages of bytes [start, end) of a's memory are resident."""
    base = a.ctypes.data + start
    lo = base - base % PAGE
    n = -(-(a.ctypes.data + end - lo) // PAGE)
    vec = ctypes.create_string_buffer(n)
    assert _libc.mincore(lo, n * PAGE, vec) == 0, ctypes.get_errno()
    return sum(b & 1 for b in vec.raw)


def reserve(mb: int = 64) -> Slab:
    s = Slab.reserve((DIM,), np.float32, max_bytes=mb << 20)
    if s is None:
        pytest.fail("no reserved slab on this Linux machine")
    return s


def test_views_share_memory_and_new_rows_read_zero() -> None:
    s = reserve()
    small = s.view(10)
    small[:] = 7.0
    big = s.view(1000)
    assert big.shape == (1000, DIM) and big.dtype == np.float32
    assert (big[:10] == 7.0).all() and (big[10:] == 0.0).all()
    big[3, 5] = -1.0
    assert small[3, 5] == -1.0  # no copy: an earlier view sees later writes
    assert s.max_rows == (64 << 20) // ROW
    with pytest.raises(ValueError, match="at most"):
        s.view(s.max_rows + 1)


def test_a_view_keeps_the_reservation_mapped() -> None:
    s = reserve()
    v = s.view(100)
    v[:] = 3.0
    del s
    assert (v == 3.0).all() and v.sum() == 3.0 * 100 * DIM


def test_prefault_makes_pages_resident_without_writing_them() -> None:
    s = reserve()
    v = s.view(40000)  # 10 MB
    assert resident_pages(v, 0, 40000 * ROW) == 0
    s.prefault(40000)
    assert slab_mod.prefault_idle()
    assert resident_pages(v, 0, 40000 * ROW) == -(-40000 * ROW // PAGE)
    assert not v.any()


def test_release_gives_back_the_pages_past_the_rows_kept() -> None:
    s = reserve()
    v = s.view(40000)
    v[:] = 1.0
    s.prefault(60000)  # and some past the view
    assert slab_mod.prefault_idle()
    s.release(1000)
    kept = -(-1000 * ROW // PAGE)
    # (and the rest of a huge page the kept rows end in, split lazily)
    assert kept <= resident_pages(v, 0, 40000 * ROW) < kept + HUGE // PAGE
    assert (v[:1000] == 1.0).all()
    assert not s.view(60000)[1000 + PAGE // ROW :].any()  # the rest reads zero again
    # Asked again after a release, the helper faults in again.
    s.prefault(20000)
    assert slab_mod.prefault_idle()
    assert resident_pages(v, 0, 20000 * ROW) == -(-20000 * ROW // PAGE)


def test_a_bulk_loaded_index_grows_on_a_slab_and_trims_it() -> None:
    rng = np.random.default_rng(5)
    vs = normalize(rng.standard_normal((30000, DIM)).astype(np.float32))
    keys = [f"k{i}" for i in range(len(vs))]
    plain = VectorIndex(DIM)
    plain.upsert_many(keys, vs)
    idx = VectorIndex(DIM)
    idx.hold_training(True)  # a bootstrap building it aside
    for lo in range(0, len(vs), 1000):
        idx.upsert_many(keys[lo : lo + 1000], vs[lo : lo + 1000])
    assert idx._slab is not None and plain._slab is None
    assert slab_mod.prefault_idle()
    grid = idx._grid
    assert resident_pages(grid, 0, grid.nbytes) == -(-grid.nbytes // PAGE)
    idx.trim()
    idx.hold_training(False)
    assert idx.capacity == len(vs)
    q = vs[17]
    assert idx.query(q, 5, -1.0) == plain.query(q, 5, -1.0)
    assert idx.query(q, 1, 0.0)[0][0] == "k17"
    # Past the rows kept, nothing stays resident but the rest of the huge
    # page the last row is in (the kernel splits it lazily); growing again
    # still works.
    tail = idx._slab.view(len(vs) + 100000) if idx._slab is not None else None
    assert tail is not None
    end = -(-len(vs) * ROW // PAGE) * PAGE
    assert resident_pages(tail, end, tail.nbytes) < HUGE // PAGE
    idx.upsert_many(["new"], vs[:1])
    idx.delete_many(["k0"])
    assert idx.query(vs[0], 1, 0.0)[0][0] == "new"


def test_a_bulk_load_faults_in_a_bounded_lead_ahead_of_its_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The helper stays at most PREFAULT_AHEAD_BYTES (or one growth step)
    ahead of the rows written, however large the slab has grown: a lead of
    a whole growth step left 170 MB faulted in and unused at 1M rows."""
    monkeypatch.setattr(index_mod, "PREFAULT_AHEAD_BYTES", 40 * ROW)  # 40 rows
    rng = np.random.default_rng(7)
    vs = normalize(rng.standard_normal((6000, DIM)).astype(np.float32))
    idx = VectorIndex(DIM)
    idx.hold_training(True)
    written = checked = 0
    for lo in range(0, len(vs), 200):
        idx.upsert_many([f"k{i}" for i in range(lo, lo + 200)], vs[lo : lo + 200])
        written = lo + 200
        if idx._slab is None:  # not before the first growth
            continue
        checked += 1
        assert slab_mod.prefault_idle()
        grid = idx._slab.view(idx._slab.max_rows)
        # The rows written, and the lead past them (40 rows, or an eighth of the
        # capacity if less), are resident: the lead was faulted in by the helper.
        lead = min(40, idx.capacity // 8)
        ahead = ((written + lead) * ROW) // PAGE * PAGE
        assert resident_pages(grid, 0, ahead) == ahead // PAGE
        # Past the 40 rows of lead, nothing was faulted in for later.
        past = -(-((written + 40) * ROW) // PAGE) * PAGE
        assert resident_pages(grid, past, past + 64 * ROW) == 0
    assert checked > 20
    assert idx.capacity > written + 40  # the slab itself grew past the lead


def test_an_index_outgrowing_its_reservation_goes_on_as_a_numpy_array(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A table larger than the reservation (the machine's RAM, in use) moves
    to a numpy array, keeping every row; without a slab at all, the index
    grows a numpy array from the start."""
    small = Slab.reserve.__func__
    monkeypatch.setattr(
        Slab, "reserve", classmethod(lambda cls, shape, dtype: small(cls, shape, dtype, 1 << 20))
    )
    rng = np.random.default_rng(6)
    vs = normalize(rng.standard_normal((10000, DIM)).astype(np.float32))  # 2.5 MB
    keys = [f"k{i}" for i in range(len(vs))]
    idx = VectorIndex(DIM)
    idx.hold_training(True)
    for lo in range(0, len(vs), 500):
        idx.upsert_many(keys[lo : lo + 500], vs[lo : lo + 500])
    assert idx._slab is None and idx._grid.flags.owndata
    idx.trim()
    for i in (0, 4095, 9999):
        assert idx.query(vs[i], 1, 0.0)[0][0] == f"k{i}"
    monkeypatch.setattr(Slab, "reserve", classmethod(lambda cls, shape, dtype: None))
    idx = VectorIndex(DIM)
    idx.hold_training(True)
    idx.upsert_many(keys, vs)
    assert idx._slab is None and idx.query(vs[7], 1, 0.0)[0][0] == "k7"


def test_a_warm_restarts_grid_is_not_moved_when_the_catch_up_grows_it() -> None:
    """A warm restart loads the grid whole while training is held (the
    catch-up that follows is a bootstrap's tail); growing it then must not
    copy the table into a slab, and nothing faulted in ahead stays."""
    rng = np.random.default_rng(8)
    vs = normalize(rng.standard_normal((4000, DIM)).astype(np.float32))
    keys = [f"k{i}" for i in range(len(vs))]
    src = VectorIndex(DIM)
    src.upsert_many(keys, vs)
    mask, grid = src.export_rows(keys)
    assert mask.all()
    idx = VectorIndex(DIM)
    idx.hold_training(True)
    idx.load_rows(keys, grid.astype(np.float32))
    idx.trim()
    loaded = idx._grid
    idx.upsert_many(["new"], vs[:1])
    assert idx._slab is None
    # Grown in place (heap.resize): the same array, not a copy into a new one.
    assert idx._grid is loaded and idx._grid.flags.owndata
    idx.hold_training(False)
    assert idx.query(vs[5], 1, 0.0)[0][0] == "k5"
