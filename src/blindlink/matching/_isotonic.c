/* Weighted isotonic regression by pool adjacent violators, for the match model's fit
 * (match_model._isotonic), which the estimates' intervals run 1,500 times a run.
 *
 * The same algorithm and the same double arithmetic as match_model._isotonic_python, so the
 * results are bit-identical (setup.py turns off floating-point contraction, which could fuse a
 * multiplication and an addition): a stack of pooled blocks, each with its mean, weight and
 * first index; an incoming value pools with the blocks above it while they exceed it, into
 * their weighted mean (the larger mean where both weigh nothing).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Whether a buffer holds `n` contiguous doubles (any number if n < 0); else ValueError. */
static int check_doubles(Py_buffer *b, Py_ssize_t n, const char *name) {
    if (b->itemsize != sizeof(double) || !PyBuffer_IsContiguous(b, 'C')) {
        PyErr_Format(PyExc_ValueError, "%s must be contiguous float64 values", name);
        return -1;
    }
    if (n >= 0 && b->len != n * (Py_ssize_t)sizeof(double)) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd contiguous float64 values", name, n);
        return -1;
    }
    return 0;
}

static void pool(const double *values, const double *weights, Py_ssize_t n, double *means,
                 double *totals, Py_ssize_t *starts, double *out) {
    Py_ssize_t top = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        double mean = values[i], total = weights[i];
        Py_ssize_t start = i;
        while (top >= 0 && means[top] > mean) {
            double pooled = totals[top] + total;
            mean = pooled > 0 ? (means[top] * totals[top] + mean * total) / pooled : means[top];
            total = pooled;
            start = starts[top];
            top--;
        }
        top++;
        means[top] = mean;
        totals[top] = total;
        starts[top] = start;
    }
    for (Py_ssize_t block = 0; block <= top; block++) {
        Py_ssize_t end = block < top ? starts[block + 1] : n;
        for (Py_ssize_t j = starts[block]; j < end; j++) out[j] = means[block];
    }
}

static PyObject *py_isotonic(PyObject *self, PyObject *args) {
    Py_buffer values, weights, out;
    if (!PyArg_ParseTuple(args, "y*y*w*", &values, &weights, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = values.len / (Py_ssize_t)sizeof(double);
    if (check_doubles(&values, -1, "values") == 0 && check_doubles(&weights, n, "weights") == 0 &&
        check_doubles(&out, n, "out") == 0) {
        double *means = PyMem_Malloc((n ? n : 1) * sizeof(double));
        double *totals = PyMem_Malloc((n ? n : 1) * sizeof(double));
        Py_ssize_t *starts = PyMem_Malloc((n ? n : 1) * sizeof(Py_ssize_t));
        if (means && totals && starts) {
            pool(values.buf, weights.buf, n, means, totals, starts, out.buf);
            result = Py_NewRef(Py_None);
        } else {
            PyErr_NoMemory();
        }
        PyMem_Free(means);
        PyMem_Free(totals);
        PyMem_Free(starts);
    }
    PyBuffer_Release(&values);
    PyBuffer_Release(&weights);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"isotonic", py_isotonic, METH_VARARGS,
     "isotonic(values, weights, out): out = the non-decreasing sequence closest to values in "
     "weighted least squares (float64 buffers of one length)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_isotonic", NULL, -1, methods};

PyMODINIT_FUNC PyInit__isotonic(void) { return PyModule_Create(&module); }
