/* chatd.engine._draw: one token drawn from softmax(row * scale), in one compiled pass.
 *
 * Why C: at temperature > 0 every token needs exp() over the whole vocabulary (49,152
 * floats for the bundled model). numpy takes five passes over the row for it (scale,
 * max, subtract, exp, block sums) and ~175 us; this takes a max pass and one fused
 * exp-and-sum pass, ~50 us, on the engine thread where every microsecond is taken from
 * llama.cpp's threads on a small machine. The arithmetic itself is in _kernel.h, which
 * _solo.c shares.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "_kernel.h"

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
