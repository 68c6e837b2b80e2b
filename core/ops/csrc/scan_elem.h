/* The element-wise work around the Mamba-1 scan, fused into single passes per channel row
 * (included once per real type; needs REAL, EXP, LOG1P, FN). In PyTorch the same work is
 * add + softplus before the scan and mul + add + silu + mul after it, each a full pass over
 * (batch, dim, L) with its own allocation, forward and backward.
 *   pre:  dt = softplus?(delta + bias[d])
 *   post: out = (y + D[d] u) * silu(z)          (D, z optional)
 * Rows are (batch, dim, L) contiguous; a call handles channels [ch0, ch1). */

static inline REAL FN(softplus)(REAL x) {
    return x > (REAL)20 ? x : LOG1P(EXP(x));            /* torch's threshold */
}

static inline REAL FN(sigmoid)(REAL x) {
    return (REAL)1 / ((REAL)1 + EXP(-x));
}

void FN(ss_pre)(int64_t dim, int64_t L, const REAL *delta, const REAL *bias, int64_t softplus,
                REAL *dt, int64_t ch0, int64_t ch1) {
    for (int64_t ch = ch0; ch < ch1; ++ch) {
        const REAL bd = bias ? bias[ch % dim] : (REAL)0;
        const REAL *x = delta + ch * L;
        REAL *o = dt + ch * L;
        if (softplus)
            for (int64_t t = 0; t < L; ++t) o[t] = FN(softplus)(x[t] + bd);
        else
            for (int64_t t = 0; t < L; ++t) o[t] = x[t] + bd;
    }
}

/* gdelta = gdt * softplus'(delta + bias); gbias_part[ch] = sum_t gdelta (summed over batch by the caller) */
void FN(ss_pre_bwd)(int64_t dim, int64_t L, const REAL *gdt, const REAL *delta, const REAL *bias,
                    int64_t softplus, REAL *gdelta, REAL *gbias_part, int64_t ch0, int64_t ch1) {
    for (int64_t ch = ch0; ch < ch1; ++ch) {
        const REAL bd = bias ? bias[ch % dim] : (REAL)0;
        const REAL *g = gdt + ch * L, *x = delta + ch * L;
        REAL *o = gdelta + ch * L, s = 0;
        if (softplus)
            for (int64_t t = 0; t < L; ++t) {
                const REAL v = x[t] + bd;
                o[t] = v > (REAL)20 ? g[t] : g[t] * FN(sigmoid)(v);
                s += o[t];
            }
        else
            for (int64_t t = 0; t < L; ++t) {
                o[t] = g[t];
                s += g[t];
            }
        if (gbias_part) gbias_part[ch] = s;
    }
}

void FN(ss_post)(int64_t dim, int64_t L, const REAL *y, const REAL *u, const REAL *D, const REAL *z,
                 REAL *out, int64_t ch0, int64_t ch1) {
    for (int64_t ch = ch0; ch < ch1; ++ch) {
        const REAL Dd = D ? D[ch % dim] : (REAL)0;
        const REAL *yc = y + ch * L, *uc = u + ch * L, *zc = z ? z + ch * L : NULL;
        REAL *o = out + ch * L;
        if (zc)
            for (int64_t t = 0; t < L; ++t) o[t] = (yc[t] + Dd * uc[t]) * zc[t] * FN(sigmoid)(zc[t]);
        else
            for (int64_t t = 0; t < L; ++t) o[t] = yc[t] + Dd * uc[t];
    }
}

/* From gout: gy (into the scan), gu_skip = D gy (added to the scan's gu by the caller),
 * gz, and gD_part[ch] = sum_t gy u. */
void FN(ss_post_bwd)(int64_t dim, int64_t L, const REAL *gout, const REAL *y, const REAL *u,
                     const REAL *D, const REAL *z, REAL *gy, REAL *gu_skip, REAL *gz, REAL *gD_part,
                     int64_t ch0, int64_t ch1) {
    for (int64_t ch = ch0; ch < ch1; ++ch) {
        const REAL Dd = D ? D[ch % dim] : (REAL)0;
        const REAL *go = gout + ch * L, *yc = y + ch * L, *uc = u + ch * L, *zc = z ? z + ch * L : NULL;
        REAL *gyc = gy + ch * L, *guc = gu_skip + ch * L, *gzc = gz ? gz + ch * L : NULL, sD = 0;
        for (int64_t t = 0; t < L; ++t) {
            REAL g = go[t];
            if (zc) {
                const REAL s = FN(sigmoid)(zc[t]), pre = yc[t] + Dd * uc[t];
                gzc[t] = g * pre * s * ((REAL)1 + zc[t] * ((REAL)1 - s));
                g *= zc[t] * s;
            }
            gyc[t] = g;
            guc[t] = g * Dd;
            sD += g * uc[t];
        }
        if (gD_part) gD_part[ch] = sD;
    }
}
