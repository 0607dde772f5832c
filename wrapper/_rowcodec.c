/* prism.wrapper._rowcodec: PostgreSQL binary row values -> the stored row
 * (key, MessagePack payload, hidden value, source vector), without building
 * a Python value per column or a dict per row.
 *
 * Place in the pipeline: between the source (pgoutput TupleData, binary COPY
 * rows) and the store, in place of "load each value with psycopg's loader,
 * gather a dict, key it (TableShape.key_of), encode it (fabric/payload.py
 * encode_row)". wrapper/fastrow.py decides which tables may take this path
 * (every column of a type this file knows) and is the only caller.
 *
 * The bytes are exactly what the Python path gives for the same row: the
 * MessagePack encodings msgpack-python's packer chooses (smallest int form,
 * str8/bin8 headers, float64 for float4 and float8, ext 1 with little-endian
 * float32s for the vector column), and the key as encode_key's compact JSON.
 * tests/unit/test_rowcodec.py checks that, value by value and row by row.
 *
 * A row holding anything else (a NULL or malformed vector, an unchanged
 * TOAST value, a text-format value, invalid UTF-8, a value of the wrong
 * width) is not encoded here: the caller gets None (per pgoutput tuple) or
 * the row's raw bytes (per COPY row) and takes the Python path, which counts,
 * fills or refuses it exactly as before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum {
    T_BOOL = 1,
    T_INT2 = 2,
    T_INT4 = 3,
    T_INT8 = 4,
    T_TEXT = 5,
    T_FLOAT4 = 6,
    T_FLOAT8 = 7,
    T_BYTEA = 8,
    T_VECTOR = 9, /* the table's vector column: a 1-D float4[] of `dim` */
};

enum { ROLE_PAYLOAD = 0, ROLE_HIDDEN = 1 };

/* -- a growable byte buffer ---------------------------------------------- */

typedef struct {
    char *p;
    Py_ssize_t n, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->n + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more) cap *= 2;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const void *src, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->n, src, (size_t)n);
    b->n += n;
    return 0;
}

static inline int buf_byte(Buf *b, unsigned char c) { return buf_put(b, &c, 1); }

static void buf_free(Buf *b) {
    PyMem_Free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

/* -- big-endian reads and MessagePack writes ----------------------------- */

static inline uint16_t rd16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t rd64(const unsigned char *p) {
    return ((uint64_t)rd32(p) << 32) | rd32(p + 4);
}

static int put_be(Buf *b, unsigned char head, uint64_t v, int width) {
    unsigned char t[9];
    t[0] = head;
    for (int i = 0; i < width; i++) t[1 + i] = (unsigned char)(v >> (8 * (width - 1 - i)));
    return buf_put(b, t, 1 + width);
}

/* msgpack-python's choice for an int: msgpack_pack_real_uint64 for values
 * above 0, msgpack_pack_real_int64 otherwise. */
static int pack_int(Buf *b, int64_t d) {
    if (d >= 0) {
        uint64_t u = (uint64_t)d;
        if (u < 128) return buf_byte(b, (unsigned char)u);
        if (u < 256) return put_be(b, 0xcc, u, 1);
        if (u < 65536) return put_be(b, 0xcd, u, 2);
        if (u < 4294967296ULL) return put_be(b, 0xce, u, 4);
        return put_be(b, 0xcf, u, 8);
    }
    if (d >= -32) return buf_byte(b, (unsigned char)(int8_t)d);
    if (d >= -128) return put_be(b, 0xd0, (uint64_t)d, 1);
    if (d >= -32768) return put_be(b, 0xd1, (uint64_t)d, 2);
    if (d >= -2147483648LL) return put_be(b, 0xd2, (uint64_t)d, 4);
    return put_be(b, 0xd3, (uint64_t)d, 8);
}

static int pack_str_head(Buf *b, Py_ssize_t n) {
    if (n < 32) return buf_byte(b, (unsigned char)(0xa0 | n));
    if (n < 256) return put_be(b, 0xd9, (uint64_t)n, 1);
    if (n < 65536) return put_be(b, 0xda, (uint64_t)n, 2);
    return put_be(b, 0xdb, (uint64_t)n, 4);
}

static int pack_bin_head(Buf *b, Py_ssize_t n) {
    if (n < 256) return put_be(b, 0xc4, (uint64_t)n, 1);
    if (n < 65536) return put_be(b, 0xc5, (uint64_t)n, 2);
    return put_be(b, 0xc6, (uint64_t)n, 4);
}

static int pack_map_head(Buf *b, Py_ssize_t n) {
    if (n < 16) return buf_byte(b, (unsigned char)(0x80 | n));
    if (n < 65536) return put_be(b, 0xde, (uint64_t)n, 2);
    return put_be(b, 0xdf, (uint64_t)n, 4);
}

static int pack_ext_head(Buf *b, Py_ssize_t n, unsigned char code) {
    unsigned char t[6];
    switch (n) {
    case 1: t[0] = 0xd4; break;
    case 2: t[0] = 0xd5; break;
    case 4: t[0] = 0xd6; break;
    case 8: t[0] = 0xd7; break;
    case 16: t[0] = 0xd8; break;
    default:
        if (n < 256) {
            t[0] = 0xc7; t[1] = (unsigned char)n; t[2] = code;
            return buf_put(b, t, 3);
        }
        if (n < 65536) {
            t[0] = 0xc8; t[1] = (unsigned char)(n >> 8); t[2] = (unsigned char)n; t[3] = code;
            return buf_put(b, t, 4);
        }
        t[0] = 0xc9;
        t[1] = (unsigned char)(n >> 24); t[2] = (unsigned char)(n >> 16);
        t[3] = (unsigned char)(n >> 8); t[4] = (unsigned char)n; t[5] = code;
        return buf_put(b, t, 6);
    }
    t[1] = code;
    return buf_put(b, t, 2);
}

static int pack_double(Buf *b, double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    return put_be(b, 0xcb, u, 8);
}

/* Strict UTF-8, as Python's decoder: no overlong forms, no surrogates,
 * nothing above U+10FFFF. */
static int utf8_valid(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            if (i + 1 >= n || (s[i + 1] & 0xc0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (i + 2 >= n) return 0;
            unsigned char c1 = s[i + 1];
            if (c == 0xe0 && (c1 < 0xa0 || c1 > 0xbf)) return 0;
            if (c == 0xed && (c1 < 0x80 || c1 > 0x9f)) return 0;
            if ((c1 & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80) return 0;
            i += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (i + 3 >= n) return 0;
            unsigned char c1 = s[i + 1];
            if (c == 0xf0 && (c1 < 0x90 || c1 > 0xbf)) return 0;
            if (c == 0xf4 && (c1 < 0x80 || c1 > 0x8f)) return 0;
            if ((c1 & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80 || (s[i + 3] & 0xc0) != 0x80)
                return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* A JSON string as Python's json with ensure_ascii=False writes it. */
static int json_string(Buf *b, const unsigned char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (buf_byte(b, '"') < 0) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default: break;
        }
        if (esc) {
            if (buf_put(b, esc, 2) < 0) return -1;
        } else if (c < 0x20) {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            if (buf_put(b, u, 6) < 0) return -1;
        } else if (buf_byte(b, c) < 0) {
            return -1;
        }
    }
    return buf_byte(b, '"');
}

/* -- RowSpec: one table's columns, as the caller described them ----------- */

typedef struct {
    PyObject_HEAD
    int ncols;
    int *types;
    int *roles;
    Buf names;            /* every column's name, MessagePack-encoded, back to back */
    Py_ssize_t *name_off; /* ncols + 1 offsets into names */
    int nkeys;
    int *keys;            /* key columns, in key order */
    int vector;           /* the T_VECTOR column, or -1 */
    int dim;
    int npayload, nhidden;
} RowSpec;

static void spec_dealloc(RowSpec *s) {
    PyMem_Free(s->types);
    PyMem_Free(s->roles);
    PyMem_Free(s->name_off);
    PyMem_Free(s->keys);
    buf_free(&s->names);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static int int_list(PyObject *seq, int **out, int *n, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    *out = PyMem_Calloc((size_t)(len ? len : 1), sizeof(int));
    if (!*out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        (*out)[i] = (int)v;
    }
    *n = (int)len;
    Py_DECREF(fast);
    return 0;
}

/* RowSpec(names, types, roles, keys, vector, dim): names are the columns'
 * MessagePack-encoded names (bytes), types the T_* codes, roles 0 (in the
 * payload) or 1 (the hidden value), keys the key columns' indexes, vector
 * the vector column's index (-1: none) of `dim` elements. */
static int spec_init(RowSpec *s, PyObject *args, PyObject *kw) {
    PyObject *names, *types, *roles, *keys;
    int vector, dim;
    static char *kwlist[] = {"names", "types", "roles", "keys", "vector", "dim", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOii", kwlist, &names, &types, &roles, &keys,
                                     &vector, &dim))
        return -1;
    int nt, nr;
    if (int_list(types, &s->types, &nt, "types must be a sequence") < 0) return -1;
    if (int_list(roles, &s->roles, &nr, "roles must be a sequence") < 0) return -1;
    if (int_list(keys, &s->keys, &s->nkeys, "keys must be a sequence") < 0) return -1;
    PyObject *fast = PySequence_Fast(names, "names must be a sequence");
    if (!fast) return -1;
    Py_ssize_t nn = PySequence_Fast_GET_SIZE(fast);
    if (nn != nt || nn != nr || nn > 30000) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "names, types and roles differ in length");
        return -1;
    }
    s->ncols = (int)nn;
    s->name_off = PyMem_Calloc((size_t)nn + 1, sizeof(Py_ssize_t));
    if (!s->name_off) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < nn; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(fast, i);
        char *p;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(o, &p, &len) < 0 || buf_put(&s->names, p, len) < 0) {
            Py_DECREF(fast);
            return -1;
        }
        s->name_off[i + 1] = s->names.n;
        if (s->types[i] < T_BOOL || s->types[i] > T_VECTOR) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "column %zd: unknown type code %d", i, s->types[i]);
            return -1;
        }
        if (s->roles[i] == ROLE_HIDDEN) s->nhidden++;
        else s->npayload++;
    }
    Py_DECREF(fast);
    for (int k = 0; k < s->nkeys; k++) {
        int c = s->keys[k];
        if (c < 0 || c >= s->ncols) {
            PyErr_Format(PyExc_ValueError, "key column %d out of range", c);
            return -1;
        }
        int t = s->types[c];
        if (t != T_INT2 && t != T_INT4 && t != T_INT8 && t != T_TEXT && t != T_BOOL) {
            PyErr_Format(PyExc_ValueError, "key column %d: type code %d cannot key a row", c, t);
            return -1;
        }
    }
    if (vector >= s->ncols || (vector >= 0 && (s->types[vector] != T_VECTOR || dim <= 0))) {
        PyErr_SetString(PyExc_ValueError, "vector must name a T_VECTOR column, with dim > 0");
        return -1;
    }
    s->vector = vector;
    s->dim = dim;
    return 0;
}

static PyTypeObject RowSpecType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "prism.wrapper._rowcodec.RowSpec",
    .tp_basicsize = sizeof(RowSpec),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One table's columns for the native row path (wrapper/fastrow.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)spec_init,
    .tp_dealloc = (destructor)spec_dealloc,
};

/* -- encoding one row ------------------------------------------------------ */

typedef struct {
    const unsigned char *p; /* NULL: SQL NULL */
    Py_ssize_t n;
} Field;

typedef struct {
    Buf payload, hidden, key, vector;
    Field *fields;
} Work;

static void work_free(Work *w) {
    buf_free(&w->payload);
    buf_free(&w->hidden);
    buf_free(&w->key);
    buf_free(&w->vector);
    PyMem_Free(w->fields);
}

static int work_init(Work *w, const RowSpec *s) {
    memset(w, 0, sizeof(*w));
    w->fields = PyMem_Calloc((size_t)(s->ncols ? s->ncols : 1), sizeof(Field));
    if (!w->fields) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

#define NATIVE_OK 0
#define NATIVE_DECLINE 1 /* the row takes the Python path */
#define NATIVE_ERROR -1  /* a Python exception is set */

static int put_value(Buf *b, const RowSpec *s, int col, const Field *f, Buf *vec) {
    int t = s->types[col];
    const unsigned char *p = f->p;
    Py_ssize_t n = f->n;
    if (p == NULL) {
        if (t == T_VECTOR) return NATIVE_DECLINE; /* counted as "null" on the Python path */
        return buf_byte(b, 0xc0) < 0 ? NATIVE_ERROR : NATIVE_OK;
    }
    int rc = 0;
    switch (t) {
    case T_BOOL: /* psycopg: data != b"\x00" */
        rc = buf_byte(b, (n == 1 && p[0] == 0) ? 0xc2 : 0xc3);
        break;
    case T_INT2:
        if (n != 2) return NATIVE_DECLINE;
        rc = pack_int(b, (int16_t)rd16(p));
        break;
    case T_INT4:
        if (n != 4) return NATIVE_DECLINE;
        rc = pack_int(b, (int32_t)rd32(p));
        break;
    case T_INT8:
        if (n != 8) return NATIVE_DECLINE;
        rc = pack_int(b, (int64_t)rd64(p));
        break;
    case T_FLOAT4: {
        if (n != 4) return NATIVE_DECLINE;
        uint32_t u = rd32(p);
        float f4;
        memcpy(&f4, &u, 4);
        rc = pack_double(b, (double)f4);
        break;
    }
    case T_FLOAT8:
        if (n != 8) return NATIVE_DECLINE;
        if (buf_byte(b, 0xcb) < 0) return NATIVE_ERROR;
        rc = buf_put(b, p, 8); /* big-endian already, bit for bit */
        break;
    case T_TEXT:
        if (!utf8_valid(p, n)) return NATIVE_DECLINE;
        rc = pack_str_head(b, n) < 0 ? -1 : buf_put(b, p, n);
        break;
    case T_BYTEA:
        rc = pack_bin_head(b, n) < 0 ? -1 : buf_put(b, p, n);
        break;
    case T_VECTOR: {
        /* ndim, flags (has nulls), element oid, then (length, lower bound)
         * per dimension, then (int32 length, float4) per element. */
        Py_ssize_t dim = s->dim;
        if (n != 20 + 8 * dim || rd32(p) != 1 || rd32(p + 4) != 0 || rd32(p + 8) != 700 ||
            (Py_ssize_t)rd32(p + 12) != dim)
            return NATIVE_DECLINE;
        const unsigned char *e = p + 20;
        for (Py_ssize_t i = 0; i < dim; i++)
            if (rd32(e + 8 * i) != 4) return NATIVE_DECLINE;
        if (pack_ext_head(b, 4 * dim, 1) < 0 || buf_reserve(b, 4 * dim) < 0 ||
            buf_reserve(vec, 4 * dim) < 0)
            return NATIVE_ERROR;
        unsigned char *out = (unsigned char *)b->p + b->n;
        for (Py_ssize_t i = 0; i < dim; i++) {
            const unsigned char *v = e + 8 * i + 4;
            out[4 * i] = v[3];
            out[4 * i + 1] = v[2];
            out[4 * i + 2] = v[1];
            out[4 * i + 3] = v[0];
        }
        memcpy(vec->p + vec->n, out, (size_t)(4 * dim));
        b->n += 4 * dim;
        vec->n += 4 * dim;
        break;
    }
    default:
        return NATIVE_DECLINE;
    }
    return rc < 0 ? NATIVE_ERROR : NATIVE_OK;
}

static int encode_fields(const RowSpec *s, Work *w) {
    w->payload.n = w->hidden.n = w->key.n = w->vector.n = 0;
    if (pack_map_head(&w->payload, s->npayload) < 0) return NATIVE_ERROR;
    if (s->nhidden && pack_map_head(&w->hidden, s->nhidden) < 0) return NATIVE_ERROR;
    for (int i = 0; i < s->ncols; i++) {
        Buf *b = s->roles[i] == ROLE_HIDDEN ? &w->hidden : &w->payload;
        if (buf_put(b, s->names.p + s->name_off[i], s->name_off[i + 1] - s->name_off[i]) < 0)
            return NATIVE_ERROR;
        int rc = put_value(b, s, i, &w->fields[i], &w->vector);
        if (rc != NATIVE_OK) return rc;
    }
    /* The key: encode_key's compact JSON array of the key columns. */
    Buf *k = &w->key;
    if (buf_byte(k, '[') < 0) return NATIVE_ERROR;
    for (int j = 0; j < s->nkeys; j++) {
        int c = s->keys[j];
        const Field *f = &w->fields[c];
        char num[32];
        int len = 0;
        if (j && buf_byte(k, ',') < 0) return NATIVE_ERROR;
        if (f->p == NULL) {
            if (buf_put(k, "null", 4) < 0) return NATIVE_ERROR;
            continue;
        }
        switch (s->types[c]) {
        case T_INT2: len = snprintf(num, sizeof num, "%d", (int)(int16_t)rd16(f->p)); break;
        case T_INT4: len = snprintf(num, sizeof num, "%ld", (long)(int32_t)rd32(f->p)); break;
        case T_INT8: len = snprintf(num, sizeof num, "%lld", (long long)(int64_t)rd64(f->p)); break;
        case T_BOOL:
            len = (f->n == 1 && f->p[0] == 0) ? snprintf(num, sizeof num, "false")
                                             : snprintf(num, sizeof num, "true");
            break;
        case T_TEXT:
            if (json_string(k, f->p, f->n) < 0) return NATIVE_ERROR;
            continue;
        default:
            return NATIVE_DECLINE;
        }
        if (buf_put(k, num, len) < 0) return NATIVE_ERROR;
    }
    if (buf_byte(k, ']') < 0) return NATIVE_ERROR;
    return NATIVE_OK;
}

/* (key, payload, hidden or None, vector or None) of the row in `w`. */
static PyObject *row_result(const RowSpec *s, Work *w) {
    PyObject *key = PyUnicode_DecodeUTF8(w->key.p, w->key.n, "strict");
    PyObject *payload = PyBytes_FromStringAndSize(w->payload.p, w->payload.n);
    PyObject *hidden = s->nhidden ? PyBytes_FromStringAndSize(w->hidden.p, w->hidden.n)
                                  : Py_NewRef(Py_None);
    PyObject *vector = s->vector >= 0 ? PyBytes_FromStringAndSize(w->vector.p, w->vector.n)
                                      : Py_NewRef(Py_None);
    if (!key || !payload || !hidden || !vector) {
        Py_XDECREF(key);
        Py_XDECREF(payload);
        Py_XDECREF(hidden);
        Py_XDECREF(vector);
        return NULL;
    }
    PyObject *t = PyTuple_Pack(4, key, payload, hidden, vector);
    Py_DECREF(key);
    Py_DECREF(payload);
    Py_DECREF(hidden);
    Py_DECREF(vector);
    return t;
}

/* -- pgoutput TupleData -------------------------------------------------- */

/* Parse TupleData at pos: 1 ok (fields set, *end after it), 0 decline
 * (a value the Python path must see: unchanged TOAST, text format, or
 * anything malformed, which the Python path reports). */
static int parse_tuple(const RowSpec *s, Work *w, const unsigned char *m, Py_ssize_t len,
                       Py_ssize_t pos, Py_ssize_t *end) {
    if (pos < 0 || pos + 2 > len || rd16(m + pos) != (uint16_t)s->ncols) return 0;
    pos += 2;
    for (int i = 0; i < s->ncols; i++) {
        if (pos >= len) return 0;
        unsigned char kind = m[pos++];
        if (kind == 'n') {
            w->fields[i].p = NULL;
            w->fields[i].n = 0;
        } else if (kind == 'b') {
            if (pos + 4 > len) return 0;
            int32_t n = (int32_t)rd32(m + pos);
            pos += 4;
            if (n < 0 || n > len - pos) return 0;
            w->fields[i].p = m + pos;
            w->fields[i].n = n;
            pos += n;
        } else {
            return 0;
        }
    }
    *end = pos;
    return 1;
}

/* encode_tuple(spec, msg, pos) -> (end, key, payload, hidden, vector) or None */
static PyObject *encode_tuple(PyObject *self, PyObject *args) {
    RowSpec *s;
    Py_buffer view;
    Py_ssize_t pos;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!y*n", &RowSpecType, &s, &view, &pos)) return NULL;
    Work w;
    PyObject *out = NULL;
    if (work_init(&w, s) < 0) goto done;
    Py_ssize_t end;
    if (!parse_tuple(s, &w, view.buf, view.len, pos, &end)) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    int rc = encode_fields(s, &w);
    if (rc == NATIVE_ERROR) goto done;
    if (rc == NATIVE_DECLINE) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *row = row_result(s, &w);
    if (!row) goto done;
    out = Py_BuildValue("(nN)", end, row);
done:
    work_free(&w);
    PyBuffer_Release(&view);
    return out;
}

/* -- binary COPY ----------------------------------------------------------- */

/* copy_rows(spec, data, pos) -> (pos, keys, payloads, hiddens, vectors, declined, done)
 * Encode every whole row of binary COPY data from pos (after the file
 * header): keys, payloads and hiddens (None when the spec has no hidden
 * column) per encoded row; vectors, the encoded rows' source vectors back
 * to back (little-endian float32), or None; declined, the raw bytes of each
 * row the Python path must take; pos, where the first incomplete row
 * starts; done, whether the trailer was reached. */
static PyObject *copy_rows(PyObject *self, PyObject *args) {
    RowSpec *s;
    Py_buffer view;
    Py_ssize_t pos;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!y*n", &RowSpecType, &s, &view, &pos)) return NULL;
    const unsigned char *m = view.buf;
    Py_ssize_t len = view.len;
    Work w;
    Buf vectors = {0};
    PyObject *keys = PyList_New(0), *payloads = PyList_New(0), *declined = PyList_New(0);
    PyObject *hiddens = s->nhidden ? PyList_New(0) : Py_NewRef(Py_None);
    PyObject *out = NULL;
    int done = 0;
    if (work_init(&w, s) < 0 || !keys || !payloads || !declined || !hiddens) goto fail;
    if (pos < 0 || pos > len) {
        PyErr_SetString(PyExc_ValueError, "pos outside the data");
        goto fail;
    }
    while (pos + 2 <= len) {
        int16_t nf = (int16_t)rd16(m + pos);
        if (nf == -1) {
            pos += 2;
            done = 1;
            break;
        }
        if (nf != s->ncols) {
            PyErr_Format(PyExc_ValueError, "binary COPY row of %d fields, the table has %d",
                         (int)nf, s->ncols);
            goto fail;
        }
        Py_ssize_t p = pos + 2;
        int whole = 1;
        for (int i = 0; i < s->ncols; i++) {
            if (p + 4 > len) {
                whole = 0;
                break;
            }
            int32_t n = (int32_t)rd32(m + p);
            p += 4;
            if (n == -1) {
                w.fields[i].p = NULL;
                w.fields[i].n = 0;
                continue;
            }
            if (n < 0) {
                PyErr_Format(PyExc_ValueError, "binary COPY field of length %d", (int)n);
                goto fail;
            }
            if (n > len - p) {
                whole = 0;
                break;
            }
            w.fields[i].p = m + p;
            w.fields[i].n = n;
            p += n;
        }
        if (!whole) break;
        int rc = encode_fields(s, &w);
        if (rc == NATIVE_ERROR) goto fail;
        if (rc == NATIVE_DECLINE) {
            PyObject *raw = PyBytes_FromStringAndSize((const char *)m + pos, p - pos);
            if (!raw || PyList_Append(declined, raw) < 0) {
                Py_XDECREF(raw);
                goto fail;
            }
            Py_DECREF(raw);
        } else {
            PyObject *key = PyUnicode_DecodeUTF8(w.key.p, w.key.n, "strict");
            PyObject *payload = PyBytes_FromStringAndSize(w.payload.p, w.payload.n);
            int bad = !key || !payload || PyList_Append(keys, key) < 0 ||
                      PyList_Append(payloads, payload) < 0;
            Py_XDECREF(key);
            Py_XDECREF(payload);
            if (bad) goto fail;
            if (s->nhidden) {
                PyObject *h = PyBytes_FromStringAndSize(w.hidden.p, w.hidden.n);
                if (!h || PyList_Append(hiddens, h) < 0) {
                    Py_XDECREF(h);
                    goto fail;
                }
                Py_DECREF(h);
            }
            if (s->vector >= 0 && buf_put(&vectors, w.vector.p, w.vector.n) < 0) goto fail;
        }
        pos = p;
    }
    PyObject *vec = s->vector >= 0 ? PyBytes_FromStringAndSize(vectors.p, vectors.n)
                                   : Py_NewRef(Py_None);
    if (!vec) goto fail;
    out = Py_BuildValue("(nNNNNNO)", pos, keys, payloads, hiddens, vec, declined,
                        done ? Py_True : Py_False);
    keys = payloads = hiddens = declined = NULL; /* stolen by N */
fail:
    Py_XDECREF(keys);
    Py_XDECREF(payloads);
    Py_XDECREF(hiddens);
    Py_XDECREF(declined);
    buf_free(&vectors);
    work_free(&w);
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"encode_tuple", encode_tuple, METH_VARARGS,
     "encode_tuple(spec, msg, pos) -> (end, (key, payload, hidden, vector)) or None"},
    {"copy_rows", copy_rows, METH_VARARGS,
     "copy_rows(spec, data, pos) -> (pos, keys, payloads, hiddens, vectors, declined, done)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "prism.wrapper._rowcodec",
    "PostgreSQL binary rows -> stored rows, natively (see wrapper/fastrow.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__rowcodec(void) {
    if (PyType_Ready(&RowSpecType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "RowSpec", (PyObject *)&RowSpecType) < 0 ||
        PyModule_AddIntConstant(m, "T_BOOL", T_BOOL) < 0 ||
        PyModule_AddIntConstant(m, "T_INT2", T_INT2) < 0 ||
        PyModule_AddIntConstant(m, "T_INT4", T_INT4) < 0 ||
        PyModule_AddIntConstant(m, "T_INT8", T_INT8) < 0 ||
        PyModule_AddIntConstant(m, "T_TEXT", T_TEXT) < 0 ||
        PyModule_AddIntConstant(m, "T_FLOAT4", T_FLOAT4) < 0 ||
        PyModule_AddIntConstant(m, "T_FLOAT8", T_FLOAT8) < 0 ||
        PyModule_AddIntConstant(m, "T_BYTEA", T_BYTEA) < 0 ||
        PyModule_AddIntConstant(m, "T_VECTOR", T_VECTOR) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
