/* chatd.engine._solo: the steps of a lone sequence, decoded and sampled without Python.
 *
 * Why: while one sequence runs alone (one user chatting), a step is one llama_decode of
 * one row and one pick from its logits. Done in Python, the engine thread spent ~0.2 ms
 * a step around a ~5.5 ms decode (planning, committing, sampling, building the event),
 * and llama.cpp's threads waited for all of it. `run` loops decode, pick, decode on the
 * engine thread with the GIL released; each pick makes `fileno()` (an eventfd) readable,
 * and the asyncio loop takes the tokens (`take`) and turns them into events during the
 * next decode: one wake-up per token, and no third thread contending for the GIL.
 *
 * The decodes stay on the engine thread on purpose: a second thread calling
 * llama_decode gets an OpenMP team of its own, and with more OpenMP threads than cores
 * libgomp stops spinning at ggml's barriers, which made every decode ~2x slower. A run
 * ends at the sequence's end (an end-of-generation token, or its token budget), or
 * when the engine asks (`interrupt`: a new request, a cancel, shutdown), after the
 * decode in flight.
 *
 * The pick is the Python sampler's, to the bit: the greedy argmax under the same rules
 * for ties and non-finite entries, or the kernel's draw with one uniform per token from
 * the sequence's own numpy bit generator; fixed logit edits (bias, banned tokens) are
 * written into llama.cpp's row and undone, as Sampler does. A seed gives the same tokens
 * in a run as in a batched step.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "_kernel.h"

/* llama.h's struct llama_batch, which llama_decode takes by value (solo.py checks the
 * size against llama_cpp's ctypes layout). */
typedef struct {
    int32_t n_tokens;
    int32_t *token;
    float *embd;
    int32_t *pos;
    int32_t *n_seq_id;
    int32_t **seq_id;
    int8_t *logits;
} llama_batch_t;

typedef int32_t (*decode_fn)(void *ctx, llama_batch_t batch);
typedef float *(*logits_fn)(void *ctx, int32_t i);

/* numpy/random/bitgen.h: what a BitGenerator's "BitGenerator" capsule points to. */
typedef struct {
    void *state;
    uint64_t (*next_uint64)(void *st);
    uint32_t (*next_uint32)(void *st);
    double (*next_double)(void *st);
    uint64_t (*next_raw)(void *st);
} bitgen_t;

#define NO_LOGITS (-1000) /* rc when llama.cpp decoded but returned no logits row */

enum { IDLE, RUNNING, DONE };

typedef struct {
    PyObject_HEAD
    decode_fn decode;
    logits_fn logits;
    void *ctx;
    Py_ssize_t n_vocab;
    pthread_mutex_t mu;
    pthread_cond_t picked;  /* a token was picked, the run ended, or the runner closed */
    int efd;                /* an eventfd, readable likewise */
    int closed;
    int state;          /* under mu */
    atomic_int stop;    /* set from any thread: end the run after the decode in flight */
    /* the run, fixed when it begins */
    int32_t token, pos, seq_id;
    Py_ssize_t budget;
    int greedy;
    float scale;
    bitgen_t *bitgen;
    PyObject *bitgen_owner;
    int32_t *eog;
    Py_ssize_t n_eog;
    int32_t *edit_ids;  /* row[id] += val, or row[id] = -inf where val is -inf */
    float *edit_vals;
    float *saved;
    Py_ssize_t n_edit;
    double *cum;
    /* its output: entries below `produced` are final (written before it moves, under mu) */
    int32_t *out_token;
    double *out_at, *out_decode, *out_pick;
    Py_ssize_t produced, taken;
    int rc;
} Runner;

/* time.perf_counter()'s clock and arithmetic, so that event times compare with it. */
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9;
}

/* One pick from a raw logits row, as Sampler.sample makes it: the edits written in, the
 * best finite entry (greedy) or the kernel's draw at `u` (falling back to the best finite
 * entry when the edits overflowed the row), the row put back as it was. */
static Py_ssize_t pick_row(float *row, Py_ssize_t n, int greedy, float scale, double u,
                           const int32_t *ids, const float *vals, float *saved,
                           Py_ssize_t n_edit, double *cum) {
    for (Py_ssize_t k = 0; k < n_edit; k++) {
        saved[k] = row[ids[k]];
        row[ids[k]] = vals[k] == -INFINITY ? vals[k] : row[ids[k]] + vals[k];
    }
    Py_ssize_t i;
    if (greedy) {
        i = best_finite(row, n);
    } else {
        i = draw_row(row, n, scale, u, cum);
        if (i < 0) i = best_finite(row, n);
    }
    for (Py_ssize_t k = n_edit - 1; k >= 0; k--) row[ids[k]] = saved[k];
    return i;
}

static int32_t pick(Runner *r, float *row) {
    /* Sampler._draw_whole: the uniform first, one per token, then the edits. */
    double u = r->greedy ? 0.0 : r->bitgen->next_double(r->bitgen->state);
    return (int32_t)pick_row(row, r->n_vocab, r->greedy, r->scale, u, r->edit_ids,
                             r->edit_vals, r->saved, r->n_edit, r->cum);
}

static int is_eog(const Runner *r, int32_t token) {
    for (Py_ssize_t k = 0; k < r->n_eog; k++)
        if (r->eog[k] == token) return 1;
    return 0;
}

static void run(Runner *r) {
    int32_t token = r->token, pos = r->pos, seq = r->seq_id, n_seq = 1;
    int32_t *seq_ptr = &seq;
    int8_t want = 1;
    llama_batch_t batch = {1, &token, NULL, &pos, &n_seq, &seq_ptr, &want};
    for (;;) {
        double t0 = now();
        int32_t rc = r->decode(r->ctx, batch);
        double t1 = now();
        float *row = rc == 0 ? r->logits(r->ctx, 0) : NULL;
        int32_t next = row ? pick(r, row) : -1;
        double t2 = now();
        pthread_mutex_lock(&r->mu);
        int end = 1;
        if (row == NULL) {
            r->rc = rc != 0 ? rc : NO_LOGITS;
        } else {
            Py_ssize_t k = r->produced;
            r->out_token[k] = next;
            r->out_at[k] = t1;
            r->out_decode[k] = t1 - t0;
            r->out_pick[k] = t2 - t1;
            r->produced = k + 1;
            end = k + 1 >= r->budget || is_eog(r, next) || atomic_load(&r->stop);
        }
        if (end) r->state = DONE;
        pthread_cond_signal(&r->picked);
        pthread_mutex_unlock(&r->mu);
        uint64_t one = 1;
        ssize_t written = write(r->efd, &one, sizeof one); /* only fails when saturated */
        (void)written;
        if (end) return;
        token = next;
        pos++;
    }
}

static void free_run(Runner *r) {
    PyMem_RawFree(r->out_token);
    PyMem_RawFree(r->out_at);
    PyMem_RawFree(r->out_decode);
    PyMem_RawFree(r->out_pick);
    PyMem_RawFree(r->eog);
    PyMem_RawFree(r->edit_ids);
    PyMem_RawFree(r->edit_vals);
    PyMem_RawFree(r->saved);
    PyMem_RawFree(r->cum);
    r->out_token = NULL;
    r->out_at = r->out_decode = r->out_pick = r->cum = NULL;
    r->eog = r->edit_ids = NULL;
    r->edit_vals = r->saved = NULL;
    r->bitgen = NULL;
    Py_CLEAR(r->bitgen_owner);
}

static int Runner_init(Runner *r, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"decode", "logits", "ctx", "n_vocab", NULL};
    unsigned long long decode, logits, ctx;
    Py_ssize_t n_vocab;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKKn", kwlist, &decode, &logits, &ctx,
                                     &n_vocab))
        return -1;
    if (!decode || !logits || !ctx || n_vocab <= 0) {
        PyErr_SetString(PyExc_ValueError, "Runner needs llama.cpp's functions, a context "
                        "and the vocabulary size");
        return -1;
    }
    r->decode = (decode_fn)(uintptr_t)decode;
    r->logits = (logits_fn)(uintptr_t)logits;
    r->ctx = (void *)(uintptr_t)ctx;
    r->n_vocab = n_vocab;
    return 0;
}

static PyObject *Runner_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    (void)args;
    (void)kwds;
    Runner *r = (Runner *)type->tp_alloc(type, 0);
    if (r == NULL) return NULL;
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        type->tp_free((PyObject *)r);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->picked, NULL);
    atomic_init(&r->stop, 0);
    r->state = IDLE;
    return (PyObject *)r;
}

static int copy_buffer(PyObject *obj, void **out, Py_ssize_t *count, Py_ssize_t itemsize,
                       const char *what) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return -1;
    if (view.len % itemsize) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "%s: a byte length that is not a whole number of "
                     "items", what);
        return -1;
    }
    *count = view.len / itemsize;
    *out = PyMem_RawMalloc(view.len ? view.len : 1);
    if (*out == NULL) {
        PyBuffer_Release(&view);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(*out, view.buf, view.len);
    PyBuffer_Release(&view);
    return 0;
}

PyDoc_STRVAR(run_doc,
"run(token, pos, seq_id, budget, greedy, scale, bitgen, eog, edit_ids, edit_vals)\n\n"
"Decode `token` at `pos` of `seq_id`, pick the next token, decode it, and so on, for at\n"
"most `budget` picks, ending after an `eog` token (int32 buffer) or an interrupt; returns\n"
"when the run ends, while another thread takes the tokens with wait(). `greedy` picks\n"
"the best finite logit; otherwise each pick draws from softmax(row * scale) with one\n"
"uniform of `bitgen` (a numpy BitGenerator). edit_ids (int32) and edit_vals (float32)\n"
"are added to the row before each pick (-inf: banned) and undone after it.");

static PyObject *Runner_run(Runner *r, PyObject *args) {
    int token, pos, seq_id, greedy;
    Py_ssize_t budget;
    double scale;
    PyObject *bitgen, *eog, *edit_ids, *edit_vals;
    if (!PyArg_ParseTuple(args, "iiinpdOOOO", &token, &pos, &seq_id, &budget, &greedy, &scale,
                          &bitgen, &eog, &edit_ids, &edit_vals))
        return NULL;
    if (r->state != IDLE || r->closed) {
        PyErr_SetString(PyExc_RuntimeError, r->closed ? "the runner is closed"
                        : "the last run's tokens were not all taken yet");
        return NULL;
    }
    if (budget <= 0 || (!greedy && !(scale > 0.0))) {
        PyErr_SetString(PyExc_ValueError, "a run needs budget > 0 and, to draw, scale > 0");
        return NULL;
    }
    bitgen_t *gen = NULL;
    if (!greedy) {
        PyObject *capsule = PyObject_GetAttrString(bitgen, "capsule");
        if (capsule == NULL) return NULL;
        gen = PyCapsule_GetPointer(capsule, "BitGenerator");
        Py_DECREF(capsule);
        if (gen == NULL) return NULL;
    }
    Py_ssize_t n_ids = 0, n_vals = 0;
    if (copy_buffer(eog, (void **)&r->eog, &r->n_eog, 4, "eog") < 0
            || copy_buffer(edit_ids, (void **)&r->edit_ids, &n_ids, 4, "edit_ids") < 0
            || copy_buffer(edit_vals, (void **)&r->edit_vals, &n_vals, 4, "edit_vals") < 0)
        goto fail;
    if (n_ids != n_vals) {
        PyErr_SetString(PyExc_ValueError, "edit_ids and edit_vals differ in length");
        goto fail;
    }
    for (Py_ssize_t k = 0; k < n_ids; k++) {
        if (r->edit_ids[k] < 0 || r->edit_ids[k] >= r->n_vocab) {
            PyErr_SetString(PyExc_ValueError, "an edit outside the vocabulary");
            goto fail;
        }
    }
    r->n_edit = n_ids;
    Py_ssize_t n_blocks = (r->n_vocab + BLOCK - 1) / BLOCK;
    r->saved = PyMem_RawMalloc((n_ids ? n_ids : 1) * sizeof(float));
    r->cum = PyMem_RawMalloc(n_blocks * sizeof(double));
    r->out_token = PyMem_RawMalloc(budget * sizeof(int32_t));
    r->out_at = PyMem_RawMalloc(budget * sizeof(double));
    r->out_decode = PyMem_RawMalloc(budget * sizeof(double));
    r->out_pick = PyMem_RawMalloc(budget * sizeof(double));
    if (!r->saved || !r->cum || !r->out_token || !r->out_at || !r->out_decode
            || !r->out_pick) {
        PyErr_NoMemory();
        goto fail;
    }
    r->token = token;
    r->pos = pos;
    r->seq_id = seq_id;
    r->budget = budget;
    r->greedy = greedy;
    r->scale = (float)scale; /* as _draw.draw converts it */
    r->bitgen = gen;
    if (!greedy) {
        Py_INCREF(bitgen);
        r->bitgen_owner = bitgen;
    }
    r->produced = r->taken = 0;
    r->rc = 0;
    pthread_mutex_lock(&r->mu);
    r->state = RUNNING;
    pthread_cond_broadcast(&r->picked); /* a waiter may have come first */
    pthread_mutex_unlock(&r->mu);
    Py_BEGIN_ALLOW_THREADS
    run(r);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
fail:
    free_run(r);
    return NULL;
}

static PyObject *float_list(const double *values, Py_ssize_t from, Py_ssize_t to) {
    PyObject *list = PyList_New(to - from);
    if (list == NULL) return NULL;
    for (Py_ssize_t i = from; i < to; i++) {
        PyObject *v = PyFloat_FromDouble(values[i]);
        if (v == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i - from, v);
    }
    return list;
}

PyDoc_STRVAR(take_doc,
"take(block) -> (tokens, at, decode_seconds, pick_seconds, done, rc), or None\n\n"
"The tokens the run picked since the last take, when each decode ended (perf_counter's\n"
"clock), how long each decode and each pick took, whether the run is over, and\n"
"llama_decode's error code (0, or the code that ended the run; -1000 when a decode gave\n"
"no logits). With `block`, waits (without the GIL) for a token or the run's end, or for\n"
"the next run between runs; None once closed. Without, None when no run has anything\n"
"to take. One thread at a time takes a run's tokens.");

static PyObject *Runner_take(Runner *r, PyObject *arg) {
    int block = PyObject_IsTrue(arg);
    if (block < 0) return NULL;
    uint64_t count;
    ssize_t got = read(r->efd, &count, sizeof count); /* EAGAIN when not signalled */
    (void)got;
    Py_ssize_t from, to;
    int done, rc, none;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&r->mu);
    while (block && !r->closed && r->state != DONE && r->produced == r->taken)
        pthread_cond_wait(&r->picked, &r->mu);
    none = r->state == IDLE || (r->state != DONE && r->produced == r->taken);
    from = r->taken;
    to = r->produced;
    done = r->state == DONE;
    rc = r->rc;
    pthread_mutex_unlock(&r->mu);
    Py_END_ALLOW_THREADS
    if (none) Py_RETURN_NONE;
    PyObject *tokens = PyList_New(to - from);
    PyObject *at = float_list(r->out_at, from, to);
    PyObject *decode = float_list(r->out_decode, from, to);
    PyObject *picks = float_list(r->out_pick, from, to);
    PyObject *result = NULL;
    if (tokens && at && decode && picks) {
        int ok = 1;
        for (Py_ssize_t i = from; i < to && ok; i++) {
            PyObject *t = PyLong_FromLong(r->out_token[i]);
            if (t == NULL) ok = 0;
            else PyList_SET_ITEM(tokens, i - from, t);
        }
        if (ok)
            result = Py_BuildValue("(OOOOOi)", tokens, at, decode, picks,
                                   done ? Py_True : Py_False, rc);
    }
    Py_XDECREF(tokens);
    Py_XDECREF(at);
    Py_XDECREF(decode);
    Py_XDECREF(picks);
    r->taken = to;
    if (done) { /* `run` has returned or is returning: the run's memory is free to go */
        pthread_mutex_lock(&r->mu);
        r->state = IDLE;
        pthread_mutex_unlock(&r->mu);
        free_run(r);
    }
    return result;
}

static PyObject *Runner_fileno(Runner *r, PyObject *noargs) {
    (void)noargs;
    return PyLong_FromLong(r->efd);
}

static PyObject *Runner_interrupt(Runner *r, PyObject *noargs) {
    (void)noargs;
    atomic_store(&r->stop, 1);
    Py_RETURN_NONE;
}

static PyObject *Runner_clear(Runner *r, PyObject *noargs) {
    (void)noargs;
    atomic_store(&r->stop, 0);
    Py_RETURN_NONE;
}

static PyObject *Runner_interrupted(Runner *r, PyObject *noargs) {
    (void)noargs;
    return PyBool_FromLong(atomic_load(&r->stop));
}

static PyObject *Runner_close(Runner *r, PyObject *noargs) {
    (void)noargs;
    atomic_store(&r->stop, 1);
    pthread_mutex_lock(&r->mu);
    r->closed = 1;
    pthread_cond_broadcast(&r->picked);
    pthread_mutex_unlock(&r->mu);
    Py_RETURN_NONE;
}

static void Runner_dealloc(Runner *r) {
    free_run(r);
    if (r->efd >= 0) close(r->efd);
    pthread_cond_destroy(&r->picked);
    pthread_mutex_destroy(&r->mu);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyMethodDef runner_methods[] = {
    {"run", (PyCFunction)Runner_run, METH_VARARGS, run_doc},
    {"take", (PyCFunction)Runner_take, METH_O, take_doc},
    {"fileno", (PyCFunction)Runner_fileno, METH_NOARGS,
     "An eventfd that becomes readable when a token is picked or a run ends."},
    {"interrupt", (PyCFunction)Runner_interrupt, METH_NOARGS,
     "End the run after the decode in flight (any thread)."},
    {"clear", (PyCFunction)Runner_clear, METH_NOARGS,
     "Forget earlier interrupts, before deciding whether to start a run."},
    {"interrupted", (PyCFunction)Runner_interrupted, METH_NOARGS,
     "Whether an interrupt came since the last clear()."},
    {"close", (PyCFunction)Runner_close, METH_NOARGS,
     "End any run; a blocking take() then returns None between runs."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RunnerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "chatd.engine._solo.Runner",
    .tp_basicsize = sizeof(Runner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Runner(decode, logits, ctx, n_vocab): runs one sequence's steps on the "
              "calling thread and hands their tokens to another (llama_decode and "
              "llama_get_logits_ith addresses, a llama_context address).",
    .tp_new = Runner_new,
    .tp_init = (initproc)Runner_init,
    .tp_dealloc = (destructor)Runner_dealloc,
    .tp_methods = runner_methods,
};

PyDoc_STRVAR(pick_doc,
"pick(row, greedy, scale, u, edit_ids, edit_vals) -> int\n\n"
"The token a run picks from `row` (a writable contiguous float32 buffer, put back as it\n"
"was) when its uniform is `u`: what the tests hold against Sampler.sample.");

static PyObject *pick_once(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer row, ids, vals;
    int greedy;
    double scale, u;
    if (!PyArg_ParseTuple(args, "w*pddy*y*", &row, &greedy, &scale, &u, &ids, &vals))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = row.len / 4, n_edit = ids.len / 4;
    float *saved = PyMem_Malloc((n_edit ? n_edit : 1) * sizeof(float));
    double *cum = PyMem_Malloc(((n + BLOCK - 1) / BLOCK + 1) * sizeof(double));
    if (!saved || !cum) {
        PyErr_NoMemory();
    } else if (n == 0 || row.len % 4 || ids.len != vals.len || ids.len % 4) {
        PyErr_SetString(PyExc_ValueError, "pick needs a float32 row and edits of one length");
    } else {
        int ok = 1;
        for (Py_ssize_t k = 0; k < n_edit; k++)
            if (((int32_t *)ids.buf)[k] < 0 || ((int32_t *)ids.buf)[k] >= n) ok = 0;
        if (!ok)
            PyErr_SetString(PyExc_ValueError, "an edit outside the row");
        else
            result = PyLong_FromSsize_t(pick_row((float *)row.buf, n, greedy, (float)scale, u,
                                                 ids.buf, vals.buf, saved, n_edit, cum));
    }
    PyMem_Free(saved);
    PyMem_Free(cum);
    PyBuffer_Release(&row);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&vals);
    return result;
}

static PyObject *batch_size(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromSize_t(sizeof(llama_batch_t));
}

static PyMethodDef module_methods[] = {
    {"pick", pick_once, METH_VARARGS, pick_doc},
    {"batch_size", batch_size, METH_NOARGS,
     "sizeof the llama_batch this module passes to llama_decode."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_solo",
    "A lone sequence's decode-and-pick steps on a native thread.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__solo(void) {
    if (PyType_Ready(&RunnerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&RunnerType);
    if (PyModule_AddObject(m, "Runner", (PyObject *)&RunnerType) < 0
            || PyModule_AddStringConstant(m, "VERSION", DRAW_VERSION) < 0) {
        Py_DECREF(&RunnerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
