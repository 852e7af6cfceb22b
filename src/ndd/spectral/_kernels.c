/* The compiled kernel of ndd.spectral: Y = A X for a CSR matrix A (int32 indices) and a
 * row-major dense X, float32 or float64, single-threaded.
 *
 * Why by hand: the block Krylov solver multiplies S by 8-16 columns at a time, and MKL's CSR
 * kernel (what torch.mm runs on the CPU) takes about 4.5 cycles per stored entry there; this
 * loop keeps a row's sums for up to 16 columns in vector registers and reads each stored entry
 * once: 0.48 against 1.05 ms for 12 float64 columns on the README's benchmark graph (N = 2501,
 * 603,125 entries, one thread; docs/eigensolver.md, "A compiled CSR product").
 * ndd.spectral.kernels runs it only where torch runs one thread (MKL's product is threaded).
 *
 * The caller (ndd.spectral.kernels.csr_mm) checks dtypes, shapes, contiguity and the device, and
 * passes the data pointers as integers; the CSR indices are the ones ndd built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Columns c0 .. c0 + L * NV (+ L / 2 with TAIL) - 1 of Y for every row, as NV vectors VT of L
   lanes (then one HT of L / 2 lanes where TAIL): two sets of sums (even and odd entries) so that
   consecutive multiply-adds do not wait on each other. The portable loop is this with scalar
   "vectors" (VT = T, L = 1), built for the baseline CPU, the compiler vectorising what it can. */
#define NDD_LOOP(ATTR, NAME, T, VT, L, NV, HT, TAIL)                                               \
    ATTR static void NAME(int64_t n, int64_t m, int64_t c0, const int32_t *crow, const int32_t *col, \
                          const T *val, const T *X, T *Y) {                                       \
        for (int64_t i = 0; i < n; ++i) {                                                         \
            VT a[NV], b[NV];                                                                      \
            HT ah = {0}, bh = {0};                                                                \
            for (int v = 0; v < NV; ++v) a[v] = b[v] = (VT){0};                                   \
            int64_t k = crow[i], end = crow[i + 1];                                               \
            for (; k + 1 < end; k += 2) {                                                         \
                const T *x0 = X + (int64_t)col[k] * m + c0, *x1 = X + (int64_t)col[k + 1] * m + c0; \
                const T w0 = val[k], w1 = val[k + 1];                                             \
                for (int v = 0; v < NV; ++v) {                                                    \
                    VT p, q;                                                                      \
                    memcpy(&p, x0 + v * L, sizeof p);                                             \
                    memcpy(&q, x1 + v * L, sizeof q);                                             \
                    a[v] += w0 * p;                                                               \
                    b[v] += w1 * q;                                                               \
                }                                                                                 \
                if (TAIL) {                                                                       \
                    HT p, q;                                                                      \
                    memcpy(&p, x0 + NV * L, sizeof p);                                            \
                    memcpy(&q, x1 + NV * L, sizeof q);                                            \
                    ah += w0 * p;                                                                 \
                    bh += w1 * q;                                                                 \
                }                                                                                 \
            }                                                                                     \
            if (k < end) {                                                                        \
                const T *x0 = X + (int64_t)col[k] * m + c0;                                       \
                const T w0 = val[k];                                                              \
                for (int v = 0; v < NV; ++v) {                                                    \
                    VT p;                                                                         \
                    memcpy(&p, x0 + v * L, sizeof p);                                             \
                    a[v] += w0 * p;                                                               \
                }                                                                                 \
                if (TAIL) {                                                                       \
                    HT p;                                                                         \
                    memcpy(&p, x0 + NV * L, sizeof p);                                            \
                    ah += w0 * p;                                                                 \
                }                                                                                 \
            }                                                                                     \
            T *y = Y + i * m + c0;                                                                \
            for (int v = 0; v < NV; ++v) {                                                        \
                VT r = a[v] + b[v];                                                               \
                memcpy(y + v * L, &r, sizeof r);                                                  \
            }                                                                                     \
            if (TAIL) {                                                                           \
                HT r = ah + bh;                                                                   \
                memcpy(y + NV * L, &r, sizeof r);                                                 \
            }                                                                                     \
        }                                                                                         \
    }

#define NDD_PORTABLE
#define NDD_WIDTH(T, W) NDD_LOOP(NDD_PORTABLE, rows_##T##_##W, T, T, 1, W, T, 0)
#define NDD_WIDTHS(T) NDD_WIDTH(T, 1) NDD_WIDTH(T, 2) NDD_WIDTH(T, 4) NDD_WIDTH(T, 8) NDD_WIDTH(T, 12) \
    NDD_WIDTH(T, 16)
NDD_WIDTHS(float)
NDD_WIDTHS(double)

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define NDD_AVX2 1
/* The same loop with explicit 32-byte vectors, compiled for AVX2 + FMA and chosen at run time
   (ndd_has_avx2): left to itself, GCC vectorised the 12-column loop well for AVX-512 but not for
   AVX2 (1.06 ms against 0.48 for 12 float64 columns); 12 float32 columns are 8 + 4 lanes. */
typedef double ndd_v4d __attribute__((vector_size(32)));
typedef float ndd_v8f __attribute__((vector_size(32)));
typedef float ndd_v4f __attribute__((vector_size(16)));
#define NDD_AVX2_TARGET __attribute__((target("avx2,fma")))

NDD_LOOP(NDD_AVX2_TARGET, avx2_double_4, double, ndd_v4d, 4, 1, ndd_v4d, 0)
NDD_LOOP(NDD_AVX2_TARGET, avx2_double_8, double, ndd_v4d, 4, 2, ndd_v4d, 0)
NDD_LOOP(NDD_AVX2_TARGET, avx2_double_12, double, ndd_v4d, 4, 3, ndd_v4d, 0)
NDD_LOOP(NDD_AVX2_TARGET, avx2_double_16, double, ndd_v4d, 4, 4, ndd_v4d, 0)
NDD_LOOP(NDD_AVX2_TARGET, avx2_float_4, float, ndd_v4f, 4, 1, ndd_v4f, 0)
NDD_LOOP(NDD_AVX2_TARGET, avx2_float_8, float, ndd_v8f, 8, 1, ndd_v4f, 0)
NDD_LOOP(NDD_AVX2_TARGET, avx2_float_12, float, ndd_v8f, 8, 1, ndd_v4f, 1)
NDD_LOOP(NDD_AVX2_TARGET, avx2_float_16, float, ndd_v8f, 8, 2, ndd_v4f, 0)

static int ndd_has_avx2(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return known;
}
#define NDD_PICK(T, W) (avx2 ? avx2_##T##_##W : rows_##T##_##W)
#else
#define NDD_PICK(T, W) rows_##T##_##W
#endif

/* All m columns: 16 at a time, then the rest in widths 12, 8, 4, 2, 1. */
#define NDD_PRODUCT(T)                                                                             \
    static void product_##T(int64_t n, int64_t m, const int32_t *crow, const int32_t *col,        \
                            const T *val, const T *X, T *Y, int avx2) {                           \
        (void)avx2;                                                                               \
        int64_t c = 0;                                                                            \
        for (; c + 16 <= m; c += 16) NDD_PICK(T, 16)(n, m, c, crow, col, val, X, Y);              \
        if (m - c >= 12) { NDD_PICK(T, 12)(n, m, c, crow, col, val, X, Y); c += 12; }            \
        if (m - c >= 8) { NDD_PICK(T, 8)(n, m, c, crow, col, val, X, Y); c += 8; }               \
        if (m - c >= 4) { NDD_PICK(T, 4)(n, m, c, crow, col, val, X, Y); c += 4; }               \
        if (m - c >= 2) { rows_##T##_2(n, m, c, crow, col, val, X, Y); c += 2; }                 \
        if (m - c >= 1) rows_##T##_1(n, m, c, crow, col, val, X, Y);                             \
    }
NDD_PRODUCT(float)
NDD_PRODUCT(double)

static PyObject *csrmm(PyObject *self, PyObject *args) {
    (void)self;
    long long n, m;
    unsigned long long crow, col, val, x, y;
    int is_double, vector = 1;
    if (!PyArg_ParseTuple(args, "LLKKKKKp|p", &n, &m, &crow, &col, &val, &x, &y, &is_double, &vector)) return NULL;
#ifdef NDD_AVX2
    const int avx2 = vector && ndd_has_avx2();
#else
    const int avx2 = 0;
#endif
    Py_BEGIN_ALLOW_THREADS
    if (is_double)
        product_double(n, m, (const int32_t *)crow, (const int32_t *)col, (const double *)val,
                       (const double *)x, (double *)y, avx2);
    else
        product_float(n, m, (const int32_t *)crow, (const int32_t *)col, (const float *)val,
                      (const float *)x, (float *)y, avx2);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *has_avx2(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
#ifdef NDD_AVX2
    return PyBool_FromLong(ndd_has_avx2());
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"csrmm", csrmm, METH_VARARGS,
     "csrmm(n, m, crow, col, values, X, Y, is_double, vector=True): Y = A X, every argument after m "
     "but the flags a data pointer; vector=False runs the portable loop even where AVX2 is there."},
    {"has_avx2", has_avx2, METH_NOARGS, "Whether csrmm runs its AVX2 + FMA loops on this CPU."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
