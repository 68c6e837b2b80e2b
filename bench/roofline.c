/* Ceilings for bench/bench_core.py's roofline: the scan's arithmetic with every
 * operand in registers (no memory traffic, no loop overheads beyond the state loop),
 * timed on this machine. Uses the kernel's own vector exp, so the ceiling is what the
 * kernel could reach if it did nothing but its arithmetic. Built by bench/roofline.py. */
#define _GNU_SOURCE
#include <time.h>
#include "../core/ops/csrc/scan.c"

enum { NS = 16 };

/* ns per state update, fp32: kind 0 = forward with exp(dt*A) per state (Mamba-1),
 * 1 = forward with one decay per step (SSD), 2 = backward's reverse step per state. */
double roofline_ns_per_update(int kind, int64_t steps) {
    vf8 h[NS], a[NS], gh[NS], gA[NS];
    float Bt[NS], Ct[NS];
    for (int n = 0; n < NS; ++n) {
        h[n] = (vf8){0}; gh[n] = (vf8){0} + 0.1f; gA[n] = (vf8){0};
        a[n] = (vf8){0} - (1.0f + n); Bt[n] = 0.01f * n; Ct[n] = 0.02f * n;
    }
    vf8 dl = (vf8){0} + 0.01f, x = (vf8){0} + 0.5f, g = (vf8){0} + 0.3f, acc = (vf8){0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    for (int64_t t = 0; t < steps; ++t) {
        acc = (vf8){0};
        if (kind == 0) {
            for (int n = 0; n < NS; ++n) {
                vf8 hn = vexp_f8(dl * a[n]) * h[n] + x * Bt[n];
                h[n] = hn; acc += hn * Ct[n];
            }
        } else if (kind == 1) {
            vf8 da = vexp_f8(dl * a[0]);
            for (int n = 0; n < NS; ++n) {
                vf8 hn = da * h[n] + x * Bt[n];
                h[n] = hn; acc += hn * Ct[n];
            }
        } else {
            vf8 sA = (vf8){0}, pc[NS], pb[NS];
            for (int n = 0; n < NS; ++n) {
                vf8 gn = gh[n] + g * Ct[n];
                pc[n] = g * h[n]; pb[n] = gn * x;
                acc += gn * Bt[n];
                vf8 q = gn * h[n] * a[n];
                sA += q * a[n]; gA[n] += q * dl;
                gh[n] = gn * a[n];
            }
            vf8 r0 = vreduce_f8(pc) + vreduce_f8(pc + 8), r1 = vreduce_f8(pb) + vreduce_f8(pb + 8);
            acc += sA + r0 + r1;
        }
        dl[0] += acc[1] * 1e-30f;   /* a dependence, so no step is optimised away */
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
    volatile float sink = acc[3] + h[1][2] + gh[2][1] + gA[3][3];
    (void)sink;
    double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    return s * 1e9 / ((double)steps * NS * 8);
}
