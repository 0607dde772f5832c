/* prism.wrapper._logcodec: the row log's records, written and read back
 * without a Python object per field.
 *
 * Place in the pipeline: the store's writer (wrapper/rowlog.py `encode`,
 * every change the store takes) and the frame builder's read of a snapshot
 * (rowlog.py `LogView.rows`, every row a bootstrap or catch-up serves). In
 * Python each record cost a struct.pack, a join and a dozen small objects to
 * write (2-3 us), and a Record object, its header tuple and its slices to
 * read back (2.6 us): `perf` of the initial sync put the writer thread at
 * 0.48 CPU s and the frame builders at 0.63 s for 100,000 rows
 * (benchmark/README.md, "Issue 12"). rowlog.py keeps the Python versions,
 * used where this file does not compile; tests/unit/test_logcodec.py checks
 * that both give the same bytes and the same rows.
 *
 * The record format is rowlog.py's (HEADER there): a 56-byte little-endian
 * header, then table, key, old key, payload, vector and hidden value. The
 * CRC32 is zlib's, called through the zlib module (its C library is what
 * Python links; its header is not always installed).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 56
#define ABSENT 0xFFFFFFFFu
#define OP_LIVE 'U'
#define OP_TOMB 'D'

static PyObject *crc32_fn;  /* zlib.crc32 */
static PyObject *str_U, *str_D, *str_C;

static inline void put_u16(char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void put_u32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put_i64(char *p, int64_t v) { memcpy(p, &v, 8); }
static inline uint16_t get_u16(const char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t get_u32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline int64_t get_i64(const char *p) { int64_t v; memcpy(&v, p, 8); return v; }

#if PY_BIG_ENDIAN
#error "the row log is little-endian; this file assumes a little-endian host"
#endif

/* zlib.crc32(region) for a region of a buffer: one call, no copy. */
static int crc_of(const char *p, Py_ssize_t n, uint32_t *out) {
    PyObject *view = PyMemoryView_FromMemory((char *)p, n, PyBUF_READ);
    if (!view) return -1;
    PyObject *r = PyObject_CallOneArg(crc32_fn, view);
    Py_DECREF(view);
    if (!r) return -1;
    unsigned long v = PyLong_AsUnsignedLong(r);
    Py_DECREF(r);
    if (v == (unsigned long)-1 && PyErr_Occurred()) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* A value's bytes: NULL data and ABSENT length for None. */
typedef struct {
    const char *p;
    uint32_t n;
} Span;

static int span_bytes(PyObject *o, Span *s, const char *what) {
    if (o == Py_None) {
        s->p = NULL;
        s->n = ABSENT;
        return 0;
    }
    if (!PyBytes_Check(o)) {
        PyErr_Format(PyExc_TypeError, "row log %s must be bytes or None, not %.80s", what,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(o);
    if (n >= (Py_ssize_t)ABSENT) {
        PyErr_Format(PyExc_ValueError, "row log %s of %zd bytes is too large", what, n);
        return -1;
    }
    s->p = PyBytes_AS_STRING(o);
    s->n = (uint32_t)n;
    return 0;
}

static int span_str(PyObject *o, Span *s, int none_ok, const char *what) {
    if (o == Py_None && none_ok) {
        s->p = NULL;
        s->n = ABSENT;
        return 0;
    }
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "row log %s must be str%s, not %.80s", what,
                     none_ok ? " or None" : "", Py_TYPE(o)->tp_name);
        return -1;
    }
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(o, &n);
    if (!p) return -1;
    if (n >= (Py_ssize_t)ABSENT) {
        PyErr_Format(PyExc_ValueError, "row log %s of %zd bytes is too large", what, n);
        return -1;
    }
    s->p = p;
    s->n = (uint32_t)n;
    return 0;
}

static inline uint32_t len_of(const Span *s) { return s->n == ABSENT ? 0 : s->n; }

typedef struct {
    Span key, old, payload, vector, hidden;
    int64_t commit;
} Item;

/* encode(table, keys, first_position, payloads, vectors, hidden, commits,
 *        stored_us, old_keys) -> (records: bytes, lengths: list[int])
 * keys and payloads are sequences of n; vectors, hidden, commits and
 * old_keys are iterables yielding at least n items (itertools.repeat too). */
static PyObject *encode(PyObject *self, PyObject *args) {
    PyObject *table, *keys, *payloads, *vectors, *hidden, *commits, *olds;
    long long first, stored_us;
    if (!PyArg_ParseTuple(args, "UOLOOOOLO", &table, &keys, &first, &payloads, &vectors,
                          &hidden, &commits, &stored_us, &olds))
        return NULL;
    PyObject *result = NULL, *data = NULL, *lengths = NULL;
    PyObject *kseq = NULL, *pseq = NULL;
    PyObject *iters[4] = {NULL, NULL, NULL, NULL};
    PyObject **held = NULL; /* items taken from the iterators: 4 per record */
    Item *items = NULL;
    Py_ssize_t n = 0, nheld = 0;

    Span tb;
    if (span_str(table, &tb, 0, "table") < 0) return NULL;
    if (tb.n > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "row log table name longer than 65535 bytes");
        return NULL;
    }
    kseq = PySequence_Fast(keys, "row log keys must be a sequence");
    if (!kseq) goto done;
    pseq = PySequence_Fast(payloads, "row log payloads must be a sequence");
    if (!pseq) goto done;
    n = PySequence_Fast_GET_SIZE(kseq);
    if (PySequence_Fast_GET_SIZE(pseq) < n) {
        PyErr_SetString(PyExc_ValueError, "row log encode: fewer payloads than keys");
        goto done;
    }
    PyObject *sources[4] = {vectors, hidden, commits, olds};
    for (int j = 0; j < 4; j++) {
        iters[j] = PyObject_GetIter(sources[j]);
        if (!iters[j]) goto done;
    }
    items = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Item));
    held = PyMem_Calloc(n ? (size_t)n * 4 : 1, sizeof(PyObject *));
    if (!items || !held) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Item *it = &items[i];
        PyObject *got[4];
        for (int j = 0; j < 4; j++) {
            got[j] = PyIter_Next(iters[j]);
            if (!got[j]) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "row log encode: a column ran short of keys");
                goto done;
            }
            held[nheld++] = got[j];
        }
        if (span_str(PySequence_Fast_GET_ITEM(kseq, i), &it->key, 0, "key") < 0) goto done;
        if (span_bytes(PySequence_Fast_GET_ITEM(pseq, i), &it->payload, "payload") < 0) goto done;
        if (span_bytes(got[0], &it->vector, "vector") < 0) goto done;
        if (span_bytes(got[1], &it->hidden, "hidden value") < 0) goto done;
        it->commit = PyLong_AsLongLong(got[2]);
        if (it->commit == -1 && PyErr_Occurred()) goto done;
        if (span_str(got[3], &it->old, 1, "old key") < 0) goto done;
        uint64_t size = (uint64_t)HEADER_SIZE + tb.n + it->key.n + len_of(&it->old) +
                        len_of(&it->payload) + len_of(&it->vector) + len_of(&it->hidden);
        if (size >= ABSENT) {
            PyErr_Format(PyExc_ValueError, "row log record of %llu bytes is too large",
                         (unsigned long long)size);
            goto done;
        }
        total += (Py_ssize_t)size;
    }
    data = PyBytes_FromStringAndSize(NULL, total);
    lengths = PyList_New(n);
    if (!data || !lengths) goto done;
    char *out = PyBytes_AS_STRING(data);
    int64_t pos = first;
    for (Py_ssize_t i = 0; i < n; i++, pos++) {
        Item *it = &items[i];
        char *h = out;
        uint32_t size = HEADER_SIZE + tb.n + it->key.n + len_of(&it->old) +
                        len_of(&it->payload) + len_of(&it->vector) + len_of(&it->hidden);
        put_u32(h, size);
        put_i64(h + 8, pos);
        put_i64(h + 16, it->commit);
        put_i64(h + 24, stored_us);
        h[32] = it->payload.n == ABSENT ? OP_TOMB : OP_LIVE;
        h[33] = 0;
        put_u16(h + 34, (uint16_t)tb.n);
        put_u32(h + 36, it->key.n);
        put_u32(h + 40, it->old.n);
        put_u32(h + 44, it->payload.n);
        put_u32(h + 48, it->vector.n);
        put_u32(h + 52, it->hidden.n);
        char *b = h + HEADER_SIZE;
        const Span *parts[6] = {&tb, &it->key, &it->old, &it->payload, &it->vector, &it->hidden};
        for (int j = 0; j < 6; j++) {
            uint32_t m = len_of(parts[j]);
            if (m) memcpy(b, parts[j]->p, m);
            b += m;
        }
        uint32_t crc;
        if (crc_of(h + 8, (Py_ssize_t)size - 8, &crc) < 0) goto done;
        put_u32(h + 4, crc);
        PyObject *len = PyLong_FromUnsignedLong(size);
        if (!len) goto done;
        PyList_SET_ITEM(lengths, i, len);
        out += size;
    }
    result = PyTuple_Pack(2, data, lengths);
done:
    for (Py_ssize_t i = 0; i < nheld; i++) Py_DECREF(held[i]);
    PyMem_Free(held);
    PyMem_Free(items);
    for (int j = 0; j < 4; j++) Py_XDECREF(iters[j]);
    Py_XDECREF(kseq);
    Py_XDECREF(pseq);
    Py_XDECREF(data);
    Py_XDECREF(lengths);
    return result;
}

static PyObject *opt_bytes(const char *p, uint32_t n) {
    if (n == ABSENT) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(p, n);
}

/* The position an index entry (position, offset, length, tomb) holds. */
static int entry_position(PyObject *e, long long *out) {
    if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) < 1) {
        PyErr_SetString(PyExc_TypeError, "row log index entry must be a tuple");
        return -1;
    }
    *out = PyLong_AsLongLong(PyTuple_GET_ITEM(e, 0));
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* rows(data, table, after, head, index, undo, live_only)
 *     -> (rows: list[RowTuple], consumed: int)
 * The rows of `data` (whole records from the start of a buffer of the log)
 * that LogView.rows yields: each key's newest record with after < position
 * <= head, as of the view whose index and undo these are. `consumed` is
 * where the first incomplete record begins (0: the first one is). */
static PyObject *rows(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *table, *index, *undo;
    long long after, head;
    int live_only;
    if (!PyArg_ParseTuple(args, "y*ULLO!O!p", &buf, &table, &after, &head, &PyDict_Type, &index,
                          &PyDict_Type, &undo, &live_only))
        return NULL;
    PyObject *out = PyList_New(0), *result = NULL;
    Span tb;
    if (!out || span_str(table, &tb, 0, "table") < 0) goto done;
    const char *base = buf.buf;
    Py_ssize_t len = buf.len, rel = 0;
    while (rel + HEADER_SIZE <= len) {
        const char *h = base + rel;
        uint32_t n = get_u32(h);
        if (n < HEADER_SIZE) {
            PyErr_Format(PyExc_ValueError, "a row log record at %zd has length %u", rel, n);
            goto done;
        }
        if (rel + (Py_ssize_t)n > len) break;
        rel += n;
        long long position = get_i64(h + 8);
        uint16_t tl = get_u16(h + 34);
        char op = h[32];
        if (position <= after || tl != tb.n || memcmp(h + HEADER_SIZE, tb.p, tl) != 0) continue;
        if (live_only && op != OP_LIVE) continue;
        uint32_t kl = get_u32(h + 36), ol = get_u32(h + 40), pl = get_u32(h + 44);
        uint32_t vl = get_u32(h + 48), hl = get_u32(h + 52);
        uint64_t need = (uint64_t)HEADER_SIZE + tl + kl + (ol == ABSENT ? 0 : ol) +
                        (pl == ABSENT ? 0 : pl) + (vl == ABSENT ? 0 : vl) + (hl == ABSENT ? 0 : hl);
        if (need > n) {
            PyErr_Format(PyExc_ValueError,
                         "a row log record at position %lld is shorter than its fields", position);
            goto done;
        }
        const char *k = h + HEADER_SIZE + tl;
        PyObject *key = PyUnicode_DecodeUTF8(k, kl, NULL);
        if (!key) goto done;
        PyObject *e = PyDict_GetItemWithError(index, key); /* borrowed */
        long long epos = 0;
        int keep;
        if (!e && PyErr_Occurred()) goto fail_key;
        if (e && entry_position(e, &epos) < 0) goto fail_key;
        if (!e || epos > head) {
            /* Changed since the view began: its entry as of then. `e` is
             * not used past here: it is borrowed, and the allocation below
             * may run a finalizer that lets the writer replace it. */
            int had_entry = e != NULL;
            PyObject *tk = PyTuple_Pack(2, table, key);
            if (!tk) goto fail_key;
            PyObject *u = PyDict_GetItemWithError(undo, tk);
            Py_DECREF(tk);
            if (!u) {
                if (PyErr_Occurred()) goto fail_key;
                keep = had_entry && epos == position; /* undo.get(..., e) */
            } else {
                long long upos = 0;
                if (u != Py_None && entry_position(u, &upos) < 0) goto fail_key;
                keep = u != Py_None && upos == position;
            }
        } else {
            keep = epos == position;
        }
        if (!keep) {
            Py_DECREF(key);
            continue;
        }
        const char *p = k + kl;
        PyObject *old = NULL, *payload = NULL, *vector = NULL, *row = NULL;
        if (ol == ABSENT) {
            old = Py_NewRef(Py_None);
        } else {
            old = PyUnicode_DecodeUTF8(p, ol, NULL);
            p += ol;
        }
        if (!old) goto fail_row;
        payload = opt_bytes(p, pl);
        if (!payload) goto fail_row;
        p += pl == ABSENT ? 0 : pl;
        vector = opt_bytes(p, vl);
        if (!vector) goto fail_row;
        PyObject *pos_obj = PyLong_FromLongLong(position);
        PyObject *commit = pos_obj ? PyLong_FromLongLong(get_i64(h + 16)) : NULL;
        if (!commit) {
            Py_XDECREF(pos_obj);
            goto fail_row;
        }
        /* (key, op, position, payload, vector, commit_us, old key) */
        row = PyTuple_New(7);
        if (!row) {
            Py_DECREF(pos_obj);
            Py_DECREF(commit);
            goto fail_row;
        }
        PyTuple_SET_ITEM(row, 0, key);
        PyTuple_SET_ITEM(row, 1, Py_NewRef(op == OP_LIVE ? str_U : op == OP_TOMB ? str_D : str_C));
        PyTuple_SET_ITEM(row, 2, pos_obj);
        PyTuple_SET_ITEM(row, 3, payload);
        PyTuple_SET_ITEM(row, 4, vector);
        PyTuple_SET_ITEM(row, 5, commit);
        PyTuple_SET_ITEM(row, 6, old);
        int bad = PyList_Append(out, row);
        Py_DECREF(row);
        if (bad < 0) goto done;
        continue;
    fail_row:
        Py_XDECREF(old);
        Py_XDECREF(payload);
        Py_XDECREF(vector);
    fail_key:
        Py_DECREF(key);
        goto done;
    }
    result = Py_BuildValue("(On)", out, rel);
done:
    Py_XDECREF(out);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS,
     "encode(table, keys, first_position, payloads, vectors, hidden, commits, stored_us, "
     "old_keys) -> (records, lengths)"},
    {"rows", rows, METH_VARARGS,
     "rows(data, table, after, head, index, undo, live_only) -> (rows, consumed)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "prism.wrapper._logcodec",
    "The row log's records, natively (see wrapper/rowlog.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__logcodec(void) {
    PyObject *zlib = PyImport_ImportModule("zlib");
    if (!zlib) return NULL;
    crc32_fn = PyObject_GetAttrString(zlib, "crc32");
    Py_DECREF(zlib);
    if (!crc32_fn) return NULL;
    str_U = PyUnicode_InternFromString("U");
    str_D = PyUnicode_InternFromString("D");
    str_C = PyUnicode_InternFromString("C");
    if (!str_U || !str_D || !str_C) return NULL;
    return PyModule_Create(&module);
}
