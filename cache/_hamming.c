/* prism.cache._hamming: the semantic tier's Hamming scan in compiled code.
 *
 * Place in the pipeline: prism.cache.codes.CodeIndex.search calls scan() for
 * the first two stages of a lookup (sign bits of the rotated query against
 * every entry's sign bits), then score() for the few survivors (their 4-bit
 * codes against the rotated query).
 *
 * Why hand-written C rather than a library: the scan is 40 lines, and the
 * libraries measured (benchmark/README.md, "PrismCache"), faiss-cpu's
 * hamming_range_search (~90 us at 100k entries, an 18 MB wheel) and
 * simsimd's cdist (~380 us), were slower than this kernel (~40 us) or
 * pulled a large dependency. In numpy the same scan takes ~230 us: seven
 * passes over 100k entries plus a gather of the survivors.
 *
 * The layout is CodeIndex's: the first two sign words of every entry
 * column-major (`head`: two rows of `cap` uint64, so that stage 1 streams
 * two contiguous arrays), the other `words - 2` row-major (`tail`: one row
 * per entry, so that an entry stage 1 lets through costs one cache line).
 * Stage 1 sums the popcounts of the first two words (128 bits) and keeps
 * entries within r1; stage 2 adds the remaining words for those and keeps
 * entries within r2. The result is the same as the numpy path's, bit for bit (tested).
 *
 * CPU dispatch at import: AVX-512 VPOPCNTDQ (eight entries per step) where
 * the CPU has it, else the scalar POPCNT loop, else the portable one
 * (PRISM_CACHE_KERNEL=popcnt|portable forces a slower one, for tests).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PRISM_X86 1
#endif

typedef size_t (*scan_fn)(const uint64_t *, const uint64_t *, size_t, size_t, size_t,
                          const uint64_t *, unsigned, unsigned, int32_t *, uint16_t *);

/* Stage 1 in scalar code over entries [from, n): each one within r1 on the
 * first two words goes to out[m], its distance so far to dist[m]. Inlined
 * into each variant, so it compiles for that variant's target (the POPCNT
 * instruction in scan_popcnt, the tail of fewer than eight in scan_avx512). */
static inline __attribute__((always_inline)) size_t stage1_scalar(
    const uint64_t *head, size_t cap, size_t from, size_t n, const uint64_t *q, unsigned r1,
    int32_t *out, uint16_t *dist, size_t m) {
    const uint64_t *w0 = head, *w1 = head + cap;
    for (size_t i = from; i < n; i++) {
        unsigned d = (unsigned)(__builtin_popcountll(w0[i] ^ q[0]) +
                                __builtin_popcountll(w1[i] ^ q[1]));
        if (d <= r1) { out[m] = (int32_t)i; dist[m] = (uint16_t)d; m++; }
    }
    return m;
}

/* Stage 2 over the stage-1 survivors in out[:m1] (dist[:m1] their distance
 * on the first two words): their tail rows lie at random places, so each is
 * prefetched a few survivors ahead (the misses overlap instead of queueing
 * one after another: ~80 -> ~48 us per scan at 100k entries). Compacts out
 * and dist in place; returns the survivors' count. */
static inline __attribute__((always_inline)) size_t refine(
    const uint64_t *tail, size_t words, const uint64_t *q, unsigned r2, int32_t *out,
    uint16_t *dist, size_t m1) {
    const size_t rest = words - 2, ahead = 8;
    size_t m = 0;
    for (size_t c = 0; c < m1; c++) {
        if (c + ahead < m1) __builtin_prefetch(tail + (size_t)out[c + ahead] * rest);
        const size_t j = (size_t)out[c];
        unsigned d = dist[c];
        for (size_t w = 0; w < rest; w++)
            d += (unsigned)__builtin_popcountll(tail[j * rest + w] ^ q[2 + w]);
        if (d <= r2) { out[m] = (int32_t)j; dist[m] = (uint16_t)d; m++; }
    }
    return m;
}

static size_t scan_portable(const uint64_t *head, const uint64_t *tail, size_t cap, size_t words,
                            size_t n, const uint64_t *q, unsigned r1, unsigned r2, int32_t *out,
                            uint16_t *dist) {
    size_t m = stage1_scalar(head, cap, 0, n, q, r1, out, dist, 0);
    return refine(tail, words, q, r2, out, dist, m);
}

#ifdef PRISM_X86
__attribute__((target("popcnt"))) static size_t scan_popcnt(
    const uint64_t *head, const uint64_t *tail, size_t cap, size_t words, size_t n,
    const uint64_t *q, unsigned r1, unsigned r2, int32_t *out, uint16_t *dist) {
    size_t m = stage1_scalar(head, cap, 0, n, q, r1, out, dist, 0);
    return refine(tail, words, q, r2, out, dist, m);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt"))) static size_t
scan_avx512(const uint64_t *head, const uint64_t *tail, size_t cap, size_t words, size_t n,
            const uint64_t *q, unsigned r1, unsigned r2, int32_t *out, uint16_t *dist) {
    size_t m = 0;
    const uint64_t *w0 = head, *w1 = head + cap;
    const __m512i q0 = _mm512_set1_epi64((long long)q[0]);
    const __m512i q1 = _mm512_set1_epi64((long long)q[1]);
    const __m512i rad = _mm512_set1_epi64((long long)r1);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) { /* stage 1: eight entries per step */
        __m512i a = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(w0 + i), q0));
        __m512i b = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(w1 + i), q1));
        __m512i d = _mm512_add_epi64(a, b);
        __mmask8 k = _mm512_cmple_epu64_mask(d, rad);
        if (k) { /* survivors are ~1-2% of entries */
            uint64_t lanes[8];
            _mm512_storeu_si512(lanes, d);
            do {
                unsigned j = (unsigned)__builtin_ctz(k);
                out[m] = (int32_t)(i + j);
                dist[m] = (uint16_t)lanes[j];
                m++;
                k &= (__mmask8)(k - 1);
            } while (k);
        }
    }
    m = stage1_scalar(head, cap, i, n, q, r1, out, dist, m);
    return refine(tail, words, q, r2, out, dist, m);
}
#endif

static scan_fn chosen = scan_portable;
static const char *chosen_name = "portable";

static PyObject *py_scan(PyObject *self, PyObject *args) {
    Py_buffer head, tail, query, out, dist;
    Py_ssize_t cap, words, n;
    unsigned int r1, r2;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*nnny*IIw*w*", &head, &tail, &cap, &words, &n, &query, &r1,
                          &r2, &out, &dist))
        return NULL;
    const char *bad = NULL;
    if (words < 2 || cap < 0 || n < 0 || n > cap) bad = "need words >= 2 and 0 <= n <= cap";
    else if (head.len < 2 * cap * 8) bad = "head buffer smaller than 2 * cap uint64";
    else if (tail.len < (words - 2) * cap * 8) bad = "tail buffer smaller than (words - 2) * cap uint64";
    else if (query.len < words * 8) bad = "query buffer smaller than words uint64";
    else if (out.len < n * 4) bad = "out buffer smaller than n int32";
    else if (dist.len < n * 2) bad = "dist buffer smaller than n uint16";
    size_t m = 0;
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS
        m = chosen((const uint64_t *)head.buf, (const uint64_t *)tail.buf, (size_t)cap, (size_t)words, (size_t)n,
                   (const uint64_t *)query.buf, r1, r2, (int32_t *)out.buf,
                   (uint16_t *)dist.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&head);
    PyBuffer_Release(&tail);
    PyBuffer_Release(&query);
    PyBuffer_Release(&out);
    PyBuffer_Release(&dist);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad);
        return NULL;
    }
    return PyLong_FromSize_t(m);
}

/* The scores of a few candidates (after the scan): each entry's code
 * reconstructed and dotted with the rotated query in one loop, without
 * materializing the reconstruction. Code k_d of dimension d: the sign bit
 * (bit d of the entry's sign words) as the top bit, bit d of low plane j as
 * bit j; reconstruction (k_d - half) * step; score = inv_norm * q . recon. */
static PyObject *py_score(PyObject *self, PyObject *args) {
    Py_buffer head, tail, low, inv, slots, qr, out;
    Py_ssize_t cap, words, bits;
    double half, step;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nnny*y*ddw*", &head, &tail, &low, &inv, &cap, &words,
                          &bits, &slots, &qr, &half, &step, &out))
        return NULL;
    const Py_ssize_t dim = words * 64, plane = dim / 8, m = slots.len / 8;
    const char *bad = NULL;
    if (words < 2 || bits < 1 || bits > 8 || cap < 0) bad = "need words >= 2, 1 <= bits <= 8";
    else if (head.len < 2 * cap * 8) bad = "head buffer smaller than 2 * cap uint64";
    else if (tail.len < (words - 2) * cap * 8) bad = "tail buffer smaller than (words - 2) * cap uint64";
    else if (low.len < (bits - 1) * plane * cap) bad = "low buffer smaller than cap codes";
    else if (inv.len < cap * 4) bad = "inv_norm buffer smaller than cap float32";
    else if (qr.len < dim * 4) bad = "query buffer smaller than dim float32";
    else if (out.len < m * 4) bad = "out buffer smaller than the slots' float32";
    if (!bad) {
        const int64_t *sl = (const int64_t *)slots.buf;
        for (Py_ssize_t i = 0; i < m; i++)
            if (sl[i] < 0 || sl[i] >= cap) { bad = "a slot lies outside 0 <= slot < cap"; break; }
    }
    if (!bad) {
        const uint64_t *h = (const uint64_t *)head.buf, *t = (const uint64_t *)tail.buf;
        const uint8_t *lo = (const uint8_t *)low.buf;
        const float *q = (const float *)qr.buf, *iv = (const float *)inv.buf;
        const int64_t *sl = (const int64_t *)slots.buf;
        float *o = (float *)out.buf;
        const size_t rest = (size_t)words - 2, lowb = (size_t)((bits - 1) * plane);
        double qsum = 0.0;
        for (Py_ssize_t d = 0; d < dim; d++) qsum += q[d];
        for (Py_ssize_t i = 0; i < m; i++) {
            const size_t s = (size_t)sl[i];
            const uint8_t *code = lo + s * lowb;
            double acc = 0.0;
            for (Py_ssize_t d = 0; d < dim; d++) {
                const size_t w = (size_t)d >> 6;
                const uint64_t word = w < 2 ? h[w * (size_t)cap + s] : t[s * rest + (w - 2)];
                unsigned k = (unsigned)((word >> (d & 63)) & 1u) << (bits - 1);
                for (Py_ssize_t j = 0; j < bits - 1; j++)
                    k |= (unsigned)((code[j * plane + (d >> 3)] >> (d & 7)) & 1u) << j;
                acc += (double)q[d] * (double)k;
            }
            o[i] = (float)((acc - half * qsum) * step * (double)iv[s]);
        }
    }
    PyBuffer_Release(&head);
    PyBuffer_Release(&tail);
    PyBuffer_Release(&low);
    PyBuffer_Release(&inv);
    PyBuffer_Release(&slots);
    PyBuffer_Release(&qr);
    PyBuffer_Release(&out);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", py_scan, METH_VARARGS,
     "scan(head, tail, cap, words, n, query, r1, r2, out, dist) -> m: entries i < n whose first "
     "two sign words lie within r1 of the query's and all words within r2; their indexes "
     "(int32) and distances (uint16) are written to out[:m] and dist[:m]."},
    {"score", py_score, METH_VARARGS,
     "score(head, tail, low, inv_norm, cap, words, bits, slots, qr, half, step, out): the "
     "scores of the entries in slots (int64) against the rotated query qr (float32), written "
     "to out (float32)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hamming",
                                    "The semantic tier's Hamming scan (see _hamming.c).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__hamming(void) {
    /* PRISM_CACHE_KERNEL=popcnt|portable picks a slower variant (tests run
     * each one against the numpy scan; the fastest the CPU has is the default). */
    const char *want = getenv("PRISM_CACHE_KERNEL");
    const int cap_avx = !want || strcmp(want, "avx512") == 0;
    const int cap_popcnt = cap_avx || strcmp(want, "popcnt") == 0;
#ifdef PRISM_X86
    __builtin_cpu_init();
    if (cap_avx && __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx512f")) {
        chosen = scan_avx512;
        chosen_name = "avx512";
    } else if (cap_popcnt && __builtin_cpu_supports("popcnt")) {
        chosen = scan_popcnt;
        chosen_name = "popcnt";
    }
#else
    (void)cap_popcnt;
#endif
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "KERNEL", chosen_name) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
