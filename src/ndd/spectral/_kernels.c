/* The compiled kernel of ndd.spectral: Y = A X for a CSR matrix A (int32 indices) and a
 * row-major dense X, float32 or float64, single-threaded.
 *
 * Why by hand: the block Krylov solver multiplies S by 8-16 columns at a time, and MKL's CSR
 * kernel (what torch.mm runs on the CPU) takes about 4.5 cycles per stored entry there; this
 * loop keeps a row's sums for up to 16 columns in vector registers and reads each stored entry
 * once: 0.47 against 1.05 ms for 12 float64 columns on the README's benchmark graph (N = 2501,
 * 603,125 entries, one thread, AVX-512; docs/eigensolver.md, "A compiled CSR product").
 * ndd.spectral.kernels runs it only where torch runs one thread (MKL's product is threaded).
 *
 * The caller (ndd.spectral.kernels.csr_mm) checks dtypes, shapes, contiguity and the device, and
 * passes the data pointers as integers; the CSR indices are the ones ndd built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* One kernel per vector width; GCC or Clang on x86 compiles each for AVX-512, AVX2 and plain
   x86-64 and picks one when the library loads, so a build runs on any x86 CPU. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define NDD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NDD_CLONES
#endif

/* Columns c0 .. c0 + W - 1 of Y for every row; two sets of sums (even and odd entries) so that
   consecutive multiply-adds do not wait on each other. */
#define NDD_KERNEL(T, W)                                                                           \
    NDD_CLONES static void rows_##T##_##W(int64_t n, int64_t m, int64_t c0, const int32_t *crow,  \
                                          const int32_t *col, const T *val, const T *X, T *Y) {   \
        for (int64_t i = 0; i < n; ++i) {                                                         \
            T a[W], b[W];                                                                         \
            for (int q = 0; q < W; ++q) {                                                         \
                a[q] = 0;                                                                         \
                b[q] = 0;                                                                         \
            }                                                                                     \
            int64_t k = crow[i], end = crow[i + 1];                                               \
            for (; k + 1 < end; k += 2) {                                                         \
                const T *x0 = X + (int64_t)col[k] * m + c0, *x1 = X + (int64_t)col[k + 1] * m + c0; \
                const T w0 = val[k], w1 = val[k + 1];                                             \
                for (int q = 0; q < W; ++q) {                                                     \
                    a[q] += w0 * x0[q];                                                           \
                    b[q] += w1 * x1[q];                                                           \
                }                                                                                 \
            }                                                                                     \
            if (k < end) {                                                                        \
                const T *x0 = X + (int64_t)col[k] * m + c0;                                       \
                const T w0 = val[k];                                                              \
                for (int q = 0; q < W; ++q) a[q] += w0 * x0[q];                                   \
            }                                                                                     \
            T *y = Y + i * m + c0;                                                                \
            for (int q = 0; q < W; ++q) y[q] = a[q] + b[q];                                       \
        }                                                                                         \
    }

#define NDD_WIDTHS(T) NDD_KERNEL(T, 1) NDD_KERNEL(T, 2) NDD_KERNEL(T, 4) NDD_KERNEL(T, 8) \
    NDD_KERNEL(T, 12) NDD_KERNEL(T, 16)
NDD_WIDTHS(float)
NDD_WIDTHS(double)

/* All m columns: 16 at a time, then the rest in widths 12, 8, 4, 2, 1. */
#define NDD_PRODUCT(T)                                                                             \
    static void product_##T(int64_t n, int64_t m, const int32_t *crow, const int32_t *col,        \
                            const T *val, const T *X, T *Y) {                                     \
        int64_t c = 0;                                                                            \
        for (; c + 16 <= m; c += 16) rows_##T##_16(n, m, c, crow, col, val, X, Y);                \
        if (m - c >= 12) { rows_##T##_12(n, m, c, crow, col, val, X, Y); c += 12; }              \
        if (m - c >= 8) { rows_##T##_8(n, m, c, crow, col, val, X, Y); c += 8; }                 \
        if (m - c >= 4) { rows_##T##_4(n, m, c, crow, col, val, X, Y); c += 4; }                 \
        if (m - c >= 2) { rows_##T##_2(n, m, c, crow, col, val, X, Y); c += 2; }                 \
        if (m - c >= 1) rows_##T##_1(n, m, c, crow, col, val, X, Y);                             \
    }
NDD_PRODUCT(float)
NDD_PRODUCT(double)

static PyObject *csrmm(PyObject *self, PyObject *args) {
    (void)self;
    long long n, m;
    unsigned long long crow, col, val, x, y;
    int is_double;
    if (!PyArg_ParseTuple(args, "LLKKKKKp", &n, &m, &crow, &col, &val, &x, &y, &is_double)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (is_double)
        product_double(n, m, (const int32_t *)crow, (const int32_t *)col, (const double *)val,
                       (const double *)x, (double *)y);
    else
        product_float(n, m, (const int32_t *)crow, (const int32_t *)col, (const float *)val,
                      (const float *)x, (float *)y);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"csrmm", csrmm, METH_VARARGS,
     "csrmm(n, m, crow, col, values, X, Y, is_double): Y = A X, every argument after m a data pointer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
