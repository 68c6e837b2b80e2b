/* CPU selective scan (Mamba-1), float and double; loaded with ctypes by
 * core/ops/cpu_build.py. Plain C (GCC/Clang vector extensions) so it compiles in
 * about a second with no headers beyond libc.
 * scan_impl.h: one channel at a time; scan_lanes.h: W channels per SIMD register
 * (8 floats / 4 doubles: one AVX2 register), the exported entry points. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* aligned scratch for vectors (posix_memalign: C99 has no aligned_alloc) */
static void *vec_alloc(size_t bytes) {
    void *p = NULL;
    return posix_memalign(&p, 32, bytes) == 0 ? p : NULL;
}

/* CORE_OPS_SCAN_LANES=0 turns the lane path off (bench_core's before/after comparison). */
static int lanes_enabled(void) {
    static int on = -1;               /* a benign race: every thread computes the same value */
    if (on < 0) {
        const char *e = getenv("CORE_OPS_SCAN_LANES");
        on = !(e && e[0] == '0');
    }
    return on;
}

typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef double vd4 __attribute__((vector_size(32)));

/* exp of 8 floats: Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, and Cephes'
 * degree-6 polynomial for e^r (about 1 ulp); 2^k built in the exponent bits.
 * Inputs are clamped to the finite range, as the scan never needs inf/NaN. */
static inline vf8 vexp_f8(vf8 x) {
    const vf8 hi = (vf8){0} + 88.3762626647949f, lo = (vf8){0} - 87.3365447504f;
    vi8 m = x > hi;                                       /* lanes: -1 true, 0 false */
    x = (vf8)((m & (vi8)hi) | (~m & (vi8)x));
    m = x < lo;
    x = (vf8)((m & (vi8)lo) | (~m & (vi8)x));
    vf8 fx = x * 1.44269504088896341f + 0.5f;
    vi8 k = __builtin_convertvector(fx, vi8);          /* truncation ... */
    vf8 kf = __builtin_convertvector(k, vf8);
    k += (kf > fx);                                       /* ... made a floor (true is -1) */
    kf = __builtin_convertvector(k, vf8);
    vf8 r = x - kf * 0.693359375f + kf * 2.12194440e-4f;
    vf8 p = (vf8){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi8 bits = (k + 127) << 23;
    vf8 two_k;
    __builtin_memcpy(&two_k, &bits, sizeof two_k);
    return p * two_k;
}

#if defined(__clang__)  /* clang spells it __builtin_shufflevector, with constant indices */
#define __builtin_shuffle(a, b, m) _shuffle_generic(a, b, m)
#define _shuffle_generic(a, b, m) ({ __typeof__(a) _r; for (int _i = 0; _i < (int)(sizeof(_r) / sizeof(_r[0])); ++_i) \
        _r[_i] = m[_i] < (int)(sizeof(_r) / sizeof(_r[0])) ? a[m[_i]] : b[m[_i] - (int)(sizeof(_r) / sizeof(_r[0]))]; _r; })
#endif

/* r[j] = sum of v[j]'s lanes, for W vectors at once: a transpose-and-add tree
 * (3 levels of shuffles and adds for 8 vectors instead of 8 separate reductions). */
static inline vf8 vreduce_f8(const vf8 *v) {
    const vi8 ev = {0, 8, 2, 10, 4, 12, 6, 14}, od = {1, 9, 3, 11, 5, 13, 7, 15};
    const vi8 ev2 = {0, 1, 8, 9, 4, 5, 12, 13}, od2 = {2, 3, 10, 11, 6, 7, 14, 15};
    const vi8 ev3 = {0, 1, 2, 3, 8, 9, 10, 11}, od3 = {4, 5, 6, 7, 12, 13, 14, 15};
    vf8 s[4], q[2];
    for (int i = 0; i < 4; ++i)
        s[i] = __builtin_shuffle(v[2 * i], v[2 * i + 1], ev) + __builtin_shuffle(v[2 * i], v[2 * i + 1], od);
    for (int i = 0; i < 2; ++i)
        q[i] = __builtin_shuffle(s[2 * i], s[2 * i + 1], ev2) + __builtin_shuffle(s[2 * i], s[2 * i + 1], od2);
    return __builtin_shuffle(q[0], q[1], ev3) + __builtin_shuffle(q[0], q[1], od3);
}

static inline void vstore_add_f8(float *p, vf8 r) {
    vf8 m;
    __builtin_memcpy(&m, p, sizeof m);
    m += r;
    __builtin_memcpy(p, &m, sizeof m);
}

/* the same for 4 doubles */
typedef int64_t vl4 __attribute__((vector_size(32)));

static inline vd4 vreduce_d4(const vd4 *v) {
    const vl4 ev = {0, 4, 2, 6}, od = {1, 5, 3, 7}, ev2 = {0, 1, 4, 5}, od2 = {2, 3, 6, 7};
    vd4 s0 = __builtin_shuffle(v[0], v[1], ev) + __builtin_shuffle(v[0], v[1], od);
    vd4 s1 = __builtin_shuffle(v[2], v[3], ev) + __builtin_shuffle(v[2], v[3], od);
    return __builtin_shuffle(s0, s1, ev2) + __builtin_shuffle(s0, s1, od2);
}

static inline void vstore_add_d4(double *p, vd4 r) {
    vd4 m;
    __builtin_memcpy(&m, p, sizeof m);
    m += r;
    __builtin_memcpy(p, &m, sizeof m);
}

/* exp of 4 doubles: libm's exp per lane (the float64 path is the exact one). */
static inline vd4 vexp_d4(vd4 x) {
    vd4 r;
    for (int l = 0; l < 4; ++l) r[l] = exp(x[l]);
    return r;
}

#define REAL float
#define EXP expf
#define FN(name) name##_f32
#define W 8
#define VEC vf8
#define VEXP vexp_f8
#define LOG1P log1pf
#define VREDUCE vreduce_f8
#define VSTORE_ADD vstore_add_f8
#include "scan_impl.h"
#include "scan_lanes.h"
#include "scan_elem.h"
#undef REAL
#undef EXP
#undef FN
#undef W
#undef VEC
#undef VEXP
#undef LOG1P
#undef VREDUCE
#undef VSTORE_ADD

#define REAL double
#define EXP exp
#define FN(name) name##_f64
#define W 4
#define VEC vd4
#define VEXP vexp_d4
#define LOG1P log1p
#define VREDUCE vreduce_d4
#define VSTORE_ADD vstore_add_d4
#include "scan_impl.h"
#include "scan_lanes.h"
#include "scan_elem.h"
