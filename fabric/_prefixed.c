/* prism.fabric._prefixed: a frame's length-prefixed blocks cut into entries.
 *
 * Place in the pipeline: opening a frame (fabric/frames.py open_frame), on
 * the driver's event loop, for every row of every frame: the keys block and
 * the payloads block are each `count` entries of (u32 little-endian length,
 * bytes). In Python that is a loop of unpack_from, a slice and an append per
 * entry, and the keys then a decode each: some 1.2 us a row, a tenth of a
 * bootstrap's event loop (benchmark/README.md, "Issue 12"). frames.py keeps
 * the Python version where this file does not compile;
 * tests/unit/test_frames.py checks that both agree, errors included.
 *
 * split(block, count, as_text) -> list of count bytes (or str, decoded as
 * UTF-8, when as_text). ValueError with the same wording as frames.py's
 * Python version when the entries do not fill the block exactly;
 * UnicodeDecodeError for a text entry that is not UTF-8.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The structure first, in one pass over the lengths, so that a block that
 * is both malformed and holds bad text fails as the Python version does. */
static int check(const unsigned char *p, Py_ssize_t n, Py_ssize_t count) {
    if (count > n / 4) {
        PyErr_Format(PyExc_ValueError, "block of %zd bytes is too short for %zd entries", n,
                     count);
        return -1;
    }
    Py_ssize_t off = 0;
    for (Py_ssize_t i = 0; i < count; i++) { /* none for a negative count, as range() */
        if (n - off < 4) {
            PyErr_Format(PyExc_ValueError, "block is truncated before its %zd entries end",
                         count);
            return -1;
        }
        uint32_t len;
        memcpy(&len, p + off, 4); /* little-endian, as the wire */
        off += 4;
        /* Compared before it is added: no overflow, on 32-bit hosts either. */
        if ((size_t)len > (size_t)(n - off)) {
            if (i + 1 == count) {
                PyErr_SetString(PyExc_ValueError,
                                "block's last entry runs past the end of the block");
            } else { /* Python's unpack of the next length fails first */
                PyErr_Format(PyExc_ValueError, "block is truncated before its %zd entries end",
                             count);
            }
            return -1;
        }
        off += (Py_ssize_t)len;
    }
    if (off < n) {
        PyErr_Format(PyExc_ValueError, "block has %zd bytes after its %zd entries", n - off,
                     count);
        return -1;
    }
    return 0;
}

static PyObject *split(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t count;
    int as_text;
    if (!PyArg_ParseTuple(args, "y*np", &buf, &count, &as_text)) return NULL;
    PyObject *out = NULL;
    const unsigned char *p = (const unsigned char *)buf.buf;
    if (check(p, buf.len, count) < 0) goto done;
    out = PyList_New(count < 0 ? 0 : count);
    if (!out) goto done;
    Py_ssize_t off = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint32_t len;
        memcpy(&len, p + off, 4);
        off += 4;
        PyObject *item = as_text
                             ? PyUnicode_DecodeUTF8((const char *)p + off, (Py_ssize_t)len, NULL)
                             : PyBytes_FromStringAndSize((const char *)p + off, (Py_ssize_t)len);
        if (!item) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, item);
        off += len;
    }
done:
    PyBuffer_Release(&buf);
    return out;
}

#if PY_BIG_ENDIAN
#error "frames are little-endian; this file assumes a little-endian host"
#endif

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS,
     "split(block, count, as_text) -> the block's count (u32 length, bytes) entries"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_prefixed", NULL, -1, methods};

PyMODINIT_FUNC PyInit__prefixed(void) { return PyModule_Create(&module); }
