/* prism.wrapper._vecref: a frame's stored vectors sorted and its references
 * resolved, in one pass and one buffer; and source vectors checked (check).
 *
 * Place in the pipeline: serving, where wrapper/vectorref.py resolve_vectors
 * turns what the store holds for a frame's rows into the vectors to project
 * and seal. In Python that took a loop over the rows to sort references from
 * projected vectors, a slice of each payload, then a join: some 1.7 us a row,
 * a sixth of sealing a frame (benchmark/README.md, "Issue 12"). vectorref.py
 * keeps the Python version where this file does not compile;
 * tests/unit/test_vectorref.py checks that both agree, errors included.
 *
 * A stored vector is None, a reference (REF_BYTES: tag 0, u32 offset, u32
 * length into the row's payload) or the projected vector's own bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define REF_BYTES 9

#if PY_BIG_ENDIAN
#error "stored references are little-endian; this file assumes a little-endian host"
#endif

static inline int is_ref(PyObject *v) {
    return PyBytes_Check(v) && PyBytes_GET_SIZE(v) == REF_BYTES && PyBytes_AS_STRING(v)[0] == 0;
}

/* split(payloads, stored) -> (mask, refs, plain, sources)
 * mask: one byte a row, 1 where it has a vector; refs and plain: the indexes
 * of the rows stored by reference and by value; sources: the referenced
 * vectors' bytes, in the order of refs. ValueError for a reference that does
 * not fit its payload, TypeError for a value that is not bytes or None. */
static PyObject *split(PyObject *self, PyObject *args) {
    PyObject *payloads, *stored;
    if (!PyArg_ParseTuple(args, "OO", &payloads, &stored)) return NULL;
    PyObject *pseq = NULL, *sseq = NULL, *mask = NULL, *refs = NULL, *plain = NULL;
    PyObject *sources = NULL, *result = NULL;
    pseq = PySequence_Fast(payloads, "payloads must be a sequence");
    if (!pseq) goto done;
    sseq = PySequence_Fast(stored, "stored vectors must be a sequence");
    if (!sseq) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sseq);
    if (PySequence_Fast_GET_SIZE(pseq) != n) {
        PyErr_Format(PyExc_ValueError, "%zd payloads for %zd stored vectors",
                     PySequence_Fast_GET_SIZE(pseq), n);
        goto done;
    }
    mask = PyBytes_FromStringAndSize(NULL, n);
    refs = PyList_New(0);
    plain = PyList_New(0);
    if (!mask || !refs || !plain) goto done;
    char *m = PyBytes_AS_STRING(mask);
    /* First pass: sort the rows, check each reference, size the buffer. */
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(sseq, i);
        m[i] = v != Py_None;
        if (v == Py_None) continue;
        if (!PyBytes_Check(v)) {
            PyErr_Format(PyExc_TypeError, "stored vector of row %zd is %.80s, not bytes", i,
                         Py_TYPE(v)->tp_name);
            goto done;
        }
        PyObject *idx = PyLong_FromSsize_t(i);
        if (!idx) goto done;
        int bad = PyList_Append(is_ref(v) ? refs : plain, idx);
        Py_DECREF(idx);
        if (bad < 0) goto done;
        if (!is_ref(v)) continue;
        PyObject *p = PySequence_Fast_GET_ITEM(pseq, i);
        if (!PyBytes_Check(p)) {
            PyErr_Format(PyExc_TypeError, "payload of row %zd is %.80s, not bytes", i,
                         Py_TYPE(p)->tp_name);
            goto done;
        }
        uint32_t at, len;
        memcpy(&at, PyBytes_AS_STRING(v) + 1, 4);
        memcpy(&len, PyBytes_AS_STRING(v) + 5, 4);
        if ((uint64_t)at + len > (uint64_t)PyBytes_GET_SIZE(p) || len % 4) {
            PyErr_Format(PyExc_ValueError,
                         "reference to bytes %u..%llu does not fit a payload of %zd bytes", at,
                         (unsigned long long)at + len, PyBytes_GET_SIZE(p));
            goto done;
        }
        total += len;
    }
    sources = PyBytes_FromStringAndSize(NULL, total);
    if (!sources) goto done;
    char *out = PyBytes_AS_STRING(sources);
    Py_ssize_t nrefs = PyList_GET_SIZE(refs);
    for (Py_ssize_t j = 0; j < nrefs; j++) {
        Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(refs, j));
        PyObject *v = PySequence_Fast_GET_ITEM(sseq, i);
        PyObject *p = PySequence_Fast_GET_ITEM(pseq, i);
        uint32_t at, len;
        memcpy(&at, PyBytes_AS_STRING(v) + 1, 4);
        memcpy(&len, PyBytes_AS_STRING(v) + 5, 4);
        memcpy(out, PyBytes_AS_STRING(p) + at, len);
        out += len;
    }
    result = PyTuple_Pack(4, mask, refs, plain, sources);
done:
    Py_XDECREF(pseq);
    Py_XDECREF(sseq);
    Py_XDECREF(mask);
    Py_XDECREF(refs);
    Py_XDECREF(plain);
    Py_XDECREF(sources);
    return result;
}

/* Whether a row of `dim` float32s is all finite (no exponent of all ones)
 * and not all zeros (either sign). */
static inline void row_flags(const char *p, Py_ssize_t dim, int *finite, int *nonzero) {
    uint32_t any = 0, bad = 0;
    for (Py_ssize_t j = 0; j < dim; j++) {
        uint32_t bits;
        memcpy(&bits, p + 4 * j, 4);
        any |= bits & 0x7FFFFFFFu;
        bad |= (bits & 0x7F800000u) == 0x7F800000u;
    }
    *finite = !bad;
    *nonzero = any != 0;
}

/* check(vectors, dim) -> None | (finite, nonzero)
 * `vectors`: rows of `dim` float32s, back to back (any contiguous buffer).
 * None when every row is finite and not all zeros, else one byte a row for
 * each test. Without numpy, so without letting the interpreter lock go:
 * the pipeline thread checks every change's vector, and each release of the
 * lock there was a wait behind the store writer's Python for up to a switch
 * interval (benchmark/README.md, "Issue 12"). */
static PyObject *check(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t dim;
    if (!PyArg_ParseTuple(args, "y*n", &buf, &dim)) return NULL;
    PyObject *result = NULL, *finite = NULL, *nonzero = NULL;
    if (dim <= 0 || buf.len % (dim * 4)) {
        PyErr_Format(PyExc_ValueError, "%zd bytes are not rows of %zd float32s", buf.len, dim);
        goto done;
    }
    Py_ssize_t n = buf.len / (dim * 4);
    const char *p = buf.buf;
    int all_good = 1;
    for (Py_ssize_t i = 0; i < n && all_good; i++) {
        int finite, nonzero;
        row_flags(p + 4 * i * dim, dim, &finite, &nonzero);
        all_good = finite && nonzero;
    }
    if (all_good) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    finite = PyBytes_FromStringAndSize(NULL, n);
    nonzero = PyBytes_FromStringAndSize(NULL, n);
    if (!finite || !nonzero) goto done;
    char *f = PyBytes_AS_STRING(finite), *z = PyBytes_AS_STRING(nonzero);
    for (Py_ssize_t i = 0; i < n; i++) {
        int finite, nonzero;
        row_flags(p + 4 * i * dim, dim, &finite, &nonzero);
        f[i] = (char)finite;
        z[i] = (char)nonzero;
    }
    result = PyTuple_Pack(2, finite, nonzero);
done:
    Py_XDECREF(finite);
    Py_XDECREF(nonzero);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS, "split(payloads, stored) -> (mask, refs, plain, sources)"},
    {"check", check, METH_VARARGS, "check(vectors, dim) -> None | (finite, nonzero)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "prism.wrapper._vecref",
    "Stored vector references resolved natively (see wrapper/vectorref.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__vecref(void) { return PyModule_Create(&module); }
