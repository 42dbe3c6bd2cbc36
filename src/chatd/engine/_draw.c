/* chatd.engine._draw: one token drawn from softmax(row * scale), in one compiled pass.
 *
 * Why C: at temperature > 0 every token needs exp() over the whole vocabulary (49,152
 * floats for the bundled model). numpy takes five passes over the row for it (scale,
 * max, subtract, exp, block sums) and ~175 us; this takes a max pass and one fused
 * exp-and-sum pass, ~50 us, on the engine thread where every microsecond is taken from
 * llama.cpp's threads on a small machine.
 *
 * Reproducible by construction: the exponential is a polynomial of plain IEEE
 * operations (no FMA contraction, no fast-math), and every sum is accumulated in an
 * order fixed by the source, so the SIMD clone and the portable one return the same
 * token for the same row and the same uniform, on every x86-64 machine.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Bumped whenever the same row and uniform could give another token: it goes into
 * system_fingerprint, which tells a client that seeds may map to other outputs. */
#define DRAW_VERSION "draw-1"
#define BLOCK 256
#define LANES 8

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
/* One build that uses AVX2 where the CPU has it (chosen once, at load, by ifunc). */
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* e^x for x <= 0 (Cephes' expf polynomial, ~1 ulp); exactly 0 below -87, so that
 * banned tokens (-inf) and ones ~38 orders of magnitude down weigh nothing. NaN stays
 * NaN, which the caller sees in the total. Branch-free, so loops over it vectorise. */
static inline float exp_nonpositive(float x) {
    float xc = x > -87.0f ? x : -87.0f; /* -inf and NaN too: no float-to-int overflow */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(xc/ln2) */
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23; /* 2^n, n in [-126, 0] */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    float v = p * two_n;
    v = x != x ? x : v;
    return x < -87.0f ? 0.0f : v;
}

/* Largest entry, NaN ignored (a NaN shows up later as a NaN total). */
CLONES static float row_max(const float *x, Py_ssize_t n) {
    float m[LANES];
    for (int l = 0; l < LANES; l++) m[l] = -INFINITY;
    Py_ssize_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) m[l] = x[i + l] > m[l] ? x[i + l] : m[l];
    for (; i < n; i++) m[0] = x[i] > m[0] ? x[i] : m[0];
    float best = m[0];
    for (int l = 1; l < LANES; l++) best = m[l] > best ? m[l] : best;
    return best;
}

/* Sum of exp(x * scale - peak) over one block, in LANES running sums. */
CLONES static float block_weight(const float *x, Py_ssize_t len, float scale, float peak) {
    float w[BLOCK];
    float acc[LANES] = {0};
    for (Py_ssize_t i = 0; i < len; i++) w[i] = exp_nonpositive(x[i] * scale - peak);
    Py_ssize_t i = 0;
    for (; i + LANES <= len; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += w[i + l];
    for (; i < len; i++) acc[i % LANES] += w[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Inverse CDF at u of the weights exp(x * scale - peak): block totals in float64
 * locate the block, then its weights are summed one by one. -1 when the row has no
 * finite peak or its total is not a positive number (the caller takes the best finite
 * entry instead). A zero weight is never returned. */
static Py_ssize_t draw_row(const float *x, Py_ssize_t n, float scale, double u, double *cum) {
    float peak = row_max(x, n) * scale;
    if (!isfinite(peak)) return -1;
    Py_ssize_t n_blocks = (n + BLOCK - 1) / BLOCK;
    double total = 0.0;
    for (Py_ssize_t b = 0; b < n_blocks; b++) {
        Py_ssize_t len = (b + 1) * BLOCK <= n ? BLOCK : n - b * BLOCK;
        total += block_weight(x + b * BLOCK, len, scale, peak);
        cum[b] = total;
    }
    if (!(total > 0.0) || !isfinite(total)) return -1;
    double target = u * total;
    Py_ssize_t b = 0;
    while (b < n_blocks && !(cum[b] > target)) b++;
    if (b == n_blocks) { /* rounding put the target at the end: the last weighty block */
        b = n_blocks - 1;
        while (b > 0 && !(cum[b] > cum[b - 1])) b--;
    }
    double run = b ? cum[b - 1] : 0.0;
    Py_ssize_t start = b * BLOCK, end = start + BLOCK <= n ? start + BLOCK : n, last = -1;
    for (Py_ssize_t i = start; i < end; i++) {
        float w = exp_nonpositive(x[i] * scale - peak);
        if (w > 0.0f) {
            last = i;
            run += w;
            if (run > target) return i;
        }
    }
    return last; /* float block total above the float64 running sum: its last weight */
}

static int get_row(PyObject *obj, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    const char *f = view->format;
    if (f && (f[0] == '=' || f[0] == '@' || f[0] == (PY_LITTLE_ENDIAN ? '<' : '>'))) f++;
    if (view->ndim != 1 || view->itemsize != 4 || !f || strcmp(f, "f") != 0
            || view->len == 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "expected a non-empty contiguous float32 row");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(draw_doc,
"draw(row, scale, u) -> int\n\n"
"The index i where the running sum of exp(row * scale - max) first exceeds u times\n"
"its total: a draw from softmax(row * scale) for u uniform in [0, 1). row is a\n"
"contiguous float32 buffer and scale > 0. -1 when the row has no finite maximum or\n"
"its weights do not sum to a positive number (NaN or +inf entries).");

static PyObject *draw(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "draw(row, scale, u) takes 3 arguments");
        return NULL;
    }
    double scale = PyFloat_AsDouble(args[1]);
    if (scale == -1.0 && PyErr_Occurred()) return NULL;
    double u = PyFloat_AsDouble(args[2]);
    if (u == -1.0 && PyErr_Occurred()) return NULL;
    if (!(scale > 0.0) || !(u >= 0.0 && u < 1.0)) {
        PyErr_SetString(PyExc_ValueError, "draw needs scale > 0 and 0 <= u < 1");
        return NULL;
    }
    Py_buffer view;
    if (get_row(args[0], &view) < 0) return NULL;
    Py_ssize_t n = view.len / 4;
    double stack_cum[1024];
    double *cum = stack_cum;
    Py_ssize_t n_blocks = (n + BLOCK - 1) / BLOCK;
    if (n_blocks > 1024 && !(cum = PyMem_Malloc(n_blocks * sizeof(double)))) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t i = draw_row((const float *)view.buf, n, (float)scale, u, cum);
    if (cum != stack_cum) PyMem_Free(cum);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(i);
}

PyDoc_STRVAR(logsumexp_doc,
"logsumexp(row) -> float\n\n"
"log(sum(exp(row))) of a contiguous float32 row, for logprobs: the same two passes as\n"
"draw, the block totals summed in float64. NaN when the row has no finite maximum or\n"
"holds a NaN (the caller computes those rows the slow way).");

static PyObject *logsumexp(PyObject *self, PyObject *row) {
    (void)self;
    Py_buffer view;
    if (get_row(row, &view) < 0) return NULL;
    const float *x = (const float *)view.buf;
    Py_ssize_t n = view.len / 4;
    float peak = row_max(x, n);
    double total = 0.0;
    if (isfinite(peak)) {
        for (Py_ssize_t b = 0; b * BLOCK < n; b++) {
            Py_ssize_t len = (b + 1) * BLOCK <= n ? BLOCK : n - b * BLOCK;
            total += block_weight(x + b * BLOCK, len, 1.0f, peak);
        }
    }
    PyBuffer_Release(&view);
    if (!isfinite(peak) || !(total > 0.0) || !isfinite(total)) return PyFloat_FromDouble(NAN);
    return PyFloat_FromDouble((double)peak + log(total));
}

static PyMethodDef methods[] = {
    {"draw", (PyCFunction)(void (*)(void))draw, METH_FASTCALL, draw_doc},
    {"logsumexp", logsumexp, METH_O, logsumexp_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_draw",
    "Compiled sampling kernel: one token from a whole logits row.", -1, methods,
};

PyMODINIT_FUNC PyInit__draw(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "VERSION", DRAW_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
