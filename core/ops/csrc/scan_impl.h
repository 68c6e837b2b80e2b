/* Body of the CPU selective scan, included once per real type (see scan.c).
 * Needs REAL, EXP and FN(name) defined by the includer.
 *
 * Layouts (all contiguous, time-major inner loops over the state size N):
 *   u, dt, y, gy, gu, gdt: (batch, dim, L)        A, gA: (dim, N) / (batch, dim, N)
 *   B, C: element (b, g, t, n) at b*s_b + g*s_g + t*s_t + n, g = d / (dim / Gb);
 *         a time-invariant B is Gb = dim, s_b = s_t = 0 (same for C with Gc).
 *   ckpt: (batch, dim, nchunks, N), the state *before* each chunk of K steps.
 *   sidx: (batch, L) int32 seq_idx or NULL: the state restarts from zero at every t > 0
 *         with sidx[t] != sidx[t-1] (packed sequences).
 * Channels (b, d) are flattened to ch = b*dim + d; a call handles [ch0, ch1) so
 * Python threads can split the work (ctypes releases the GIL).
 */

static void FN(ss_fwd1)(int64_t dim, int64_t L, int64_t N, int64_t Gb, int64_t Gc,
                const REAL *u, const REAL *dt, const REAL *A,
                const REAL *B, int64_t sb_b, int64_t sb_g, int64_t sb_t,
                const REAL *C, int64_t sc_b, int64_t sc_g, int64_t sc_t,
                const REAL *h0, REAL *y, REAL *hlast, REAL *ckpt, int64_t K,
                const int32_t *sidx, int64_t ch0, int64_t ch1) {
    int64_t nc = (L + K - 1) / K;
    int64_t pgb = dim / Gb, pgc = dim / Gc;
    REAL *h = (REAL *)malloc(sizeof(REAL) * N);
    for (int64_t ch = ch0; ch < ch1; ++ch) {
        int64_t b = ch / dim, d = ch % dim, gb = d / pgb, gc = d / pgc;
        const REAL *uc = u + ch * L, *dtc = dt + ch * L, *Ad = A + d * N;
        const REAL *Bc = B + b * sb_b + gb * sb_g, *Cc = C + b * sc_b + gc * sc_g;
        REAL *yc = y + ch * L;
        const int32_t *sc = sidx ? sidx + b * L : NULL;
        for (int64_t n = 0; n < N; ++n) h[n] = h0 ? h0[ch * N + n] : (REAL)0;
        for (int64_t t = 0; t < L; ++t) {
            if (sc && t > 0 && sc[t] != sc[t - 1])
                for (int64_t n = 0; n < N; ++n) h[n] = 0;
            if (ckpt && t % K == 0) {
                REAL *ck = ckpt + (ch * nc + t / K) * N;
                for (int64_t n = 0; n < N; ++n) ck[n] = h[n];
            }
            const REAL d_t = dtc[t], x_t = d_t * uc[t];
            const REAL *Bt = Bc + t * sb_t, *Ct = Cc + t * sc_t;
            REAL acc = 0;
            for (int64_t n = 0; n < N; ++n) {
                h[n] = EXP(d_t * Ad[n]) * h[n] + x_t * Bt[n];
                acc += h[n] * Ct[n];
            }
            yc[t] = acc;
        }
        if (hlast)
            for (int64_t n = 0; n < N; ++n) hlast[ch * N + n] = h[n];
    }
    free(h);
}

/* Reverse pass. Recomputes each chunk's states from its checkpoint into a small
 * buffer (K+1 states and K decays), then walks the chunk backwards. gB/gC are
 * accumulated (+=) into the caller's buffers (one per thread: channels of a
 * group share B/C); gA is per channel (batch, dim, N), summed over batch later. */
static void FN(ss_bwd1)(int64_t dim, int64_t L, int64_t N, int64_t Gb, int64_t Gc,
                const REAL *u, const REAL *dt, const REAL *A,
                const REAL *B, int64_t sb_b, int64_t sb_g, int64_t sb_t,
                const REAL *C, int64_t sc_b, int64_t sc_g, int64_t sc_t,
                const REAL *ckpt, int64_t K, const REAL *gy, const REAL *ghlast,
                REAL *gu, REAL *gdt, REAL *gA, REAL *gB, REAL *gC, REAL *gh0,
                const int32_t *sidx, int64_t ch0, int64_t ch1) {
    int64_t nc = (L + K - 1) / K;
    int64_t pgb = dim / Gb, pgc = dim / Gc;
    REAL *hs = (REAL *)malloc(sizeof(REAL) * (K + 1) * N);
    REAL *das = (REAL *)malloc(sizeof(REAL) * K * N);
    REAL *gh = (REAL *)malloc(sizeof(REAL) * N);
    REAL *gAc = (REAL *)malloc(sizeof(REAL) * N);
    for (int64_t ch = ch0; ch < ch1; ++ch) {
        int64_t b = ch / dim, d = ch % dim, gb = d / pgb, gc = d / pgc;
        const REAL *uc = u + ch * L, *dtc = dt + ch * L, *Ad = A + d * N, *gyc = gy + ch * L;
        const REAL *Bc = B + b * sb_b + gb * sb_g, *Cc = C + b * sc_b + gc * sc_g;
        REAL *gBc = gB + b * sb_b + gb * sb_g, *gCc = gC + b * sc_b + gc * sc_g;
        REAL *guc = gu + ch * L, *gdtc = gdt + ch * L;
        const int32_t *sc = sidx ? sidx + b * L : NULL;
        for (int64_t n = 0; n < N; ++n) {
            gh[n] = ghlast ? ghlast[ch * N + n] : (REAL)0;
            gAc[n] = 0;
        }
        for (int64_t c = nc - 1; c >= 0; --c) {
            int64_t t0 = c * K, len = (L - t0 < K) ? L - t0 : K;
            const REAL *ck = ckpt + (ch * nc + c) * N;
            for (int64_t n = 0; n < N; ++n) hs[n] = ck[n];
            for (int64_t i = 0; i < len; ++i) {
                int64_t t = t0 + i;
                const REAL d_t = dtc[t], x_t = d_t * uc[t];
                const REAL *Bt = Bc + t * sb_t;
                REAL *hp = hs + i * N, *hn = hs + (i + 1) * N, *da = das + i * N;
                const REAL keep = (sc && t > 0 && sc[t] != sc[t - 1]) ? (REAL)0 : (REAL)1;
                for (int64_t n = 0; n < N; ++n) {
                    da[n] = EXP(d_t * Ad[n]);
                    hn[n] = da[n] * keep * hp[n] + x_t * Bt[n];
                }
            }
            for (int64_t i = len - 1; i >= 0; --i) {
                int64_t t = t0 + i;
                const REAL d_t = dtc[t], u_t = uc[t], x_t = d_t * u_t, g_t = gyc[t];
                const REAL *Bt = Bc + t * sb_t, *Ct = Cc + t * sc_t;
                REAL *gBt = gBc + t * sb_t, *gCt = gCc + t * sc_t;
                const REAL *hp = hs + i * N, *hn = hs + (i + 1) * N, *da = das + i * N;
                /* a packed sequence starts at t: the previous state was dropped */
                const REAL keep = (sc && t > 0 && sc[t] != sc[t - 1]) ? (REAL)0 : (REAL)1;
                REAL sB = 0, sA = 0;
                for (int64_t n = 0; n < N; ++n) {
                    REAL gn = gh[n] + g_t * Ct[n];      /* dL/dh_t */
                    gCt[n] += g_t * hn[n];
                    gBt[n] += gn * x_t;
                    sB += gn * Bt[n];
                    REAL q = gn * keep * hp[n] * da[n]; /* dL/d(dt*A) */
                    sA += q * Ad[n];
                    gAc[n] += q * d_t;
                    gh[n] = gn * da[n] * keep;          /* on to h_{t-1} */
                }
                guc[t] = sB * d_t;
                gdtc[t] = sB * u_t + sA;
            }
        }
        for (int64_t n = 0; n < N; ++n) {
            gA[ch * N + n] = gAc[n];
            if (gh0) gh0[ch * N + n] = gh[n];
        }
    }
    free(hs); free(das); free(gh); free(gAc);
}
