/* Kernels of the `c` backend, called from Rust over FFI (src/backend/c.rs).
 *
 * Plain C99 over contiguous row-major float buffers. Sizes and bounds are validated on the
 * Rust side before any call, so these functions trust their arguments. Hot loops are
 * compiled for AVX-512, AVX2 and baseline x86-64 (GCC target_clones picks one at load
 * time); elsewhere they compile once for the target. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(GPT_RS_NO_CLONES)
#define GR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GR_CLONES
#endif

/* C[m, n] += A[m, k] @ B[k, n] with row strides lda, ldb, ldc. Four rows of A at a time so
 * each row of B loaded from memory feeds four FMAs; the inner j loop vectorizes. */
GR_CLONES
void gr_matmul_acc(const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc,
                   size_t m, size_t k, size_t n) {
    size_t i = 0;
    for (; i + 4 <= m; i += 4) {
        float *c0 = c + i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        const float *a0 = a + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        for (size_t p = 0; p < k; p++) {
            const float *bp = b + p * ldb;
            const float x0 = a0[p], x1 = a1[p], x2 = a2[p], x3 = a3[p];
            for (size_t j = 0; j < n; j++) {
                const float bj = bp[j];
                c0[j] += x0 * bj;
                c1[j] += x1 * bj;
                c2[j] += x2 * bj;
                c3[j] += x3 * bj;
            }
        }
    }
    for (; i < m; i++) {
        float *ci = c + i * ldc;
        const float *ai = a + i * lda;
        for (size_t p = 0; p < k; p++) {
            const float *bp = b + p * ldb;
            const float x = ai[p];
            for (size_t j = 0; j < n; j++) ci[j] += x * bp[j];
        }
    }
}

/* C[m, n] = A[m, k] @ B[n, k]^T (+ bias[n], if not NULL); B row-major [n, k]; row stride of
 * C is ldc. Each element is one dot product, computed the same way whatever m is. */
GR_CLONES
void gr_matmul_nt(const float *a, const float *b, const float *bias, float *c, size_t ldc,
                  size_t m, size_t k, size_t n) {
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            const float *ai = a + i * k, *bj = b + j * k;
            float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
            size_t p = 0;
            for (; p + 4 <= k; p += 4) {
                s0 += ai[p] * bj[p];
                s1 += ai[p + 1] * bj[p + 1];
                s2 += ai[p + 2] * bj[p + 2];
                s3 += ai[p + 3] * bj[p + 3];
            }
            for (; p < k; p++) s0 += ai[p] * bj[p];
            c[i * ldc + j] = (s0 + s1) + (s2 + s3) + (bias ? bias[j] : 0.0f);
        }
}

/* Softmax over each of `rows` rows of length `cols`. */
void gr_softmax_rows(const float *x, float *out, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *o = out + r * cols;
        float m = -INFINITY;
        int has_nan = 0;
        for (size_t j = 0; j < cols; j++) {
            if (xr[j] > m) m = xr[j];
            if (isnan(xr[j])) has_nan = 1;
        }
        if (has_nan) m = NAN;
        double sum = 0.0;
        for (size_t j = 0; j < cols; j++) {
            o[j] = expf(xr[j] - m);
            sum += o[j];
        }
        const float inv = (float)(1.0 / sum);
        for (size_t j = 0; j < cols; j++) o[j] *= inv;
    }
}

/* Exact GELU written with erfc: 0.5 x erfc(-x / sqrt 2), accurate for large negative x.
 * Both GELUs return their limit -0.0 at -inf (instead of -inf * 0 = NaN). */
void gr_gelu(const float *x, float *out, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = x[i] == -INFINITY ? -0.0f : 0.5f * x[i] * erfcf(-x[i] * 0.70710678118654752f);
}

/* tanh GELU as x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3). */
void gr_gelu_tanh(const float *x, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float v = x[i];
        const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        out[i] = v == -INFINITY ? -0.0f : v / (1.0f + expf(-2.0f * u));
    }
}

/* Layer norm of each row: (x - mean) / sqrt(var + eps) * w + b, biased variance. */
GR_CLONES
void gr_layer_norm(const float *x, const float *w, const float *b, float *out, size_t rows,
                   size_t cols, float eps) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *o = out + r * cols;
        double s = 0.0;
        for (size_t j = 0; j < cols; j++) s += xr[j];
        const float mean = (float)(s / (double)cols);
        double v = 0.0;
        for (size_t j = 0; j < cols; j++) {
            const float d = xr[j] - mean;
            v += (double)d * d;
        }
        const float inv = 1.0f / sqrtf((float)(v / (double)cols) + eps);
        for (size_t j = 0; j < cols; j++) o[j] = (xr[j] - mean) * inv * w[j] + b[j];
    }
}

/* out[r, j] = x[r, j] + bias[j]. */
GR_CLONES
void gr_add_bias(const float *x, const float *bias, float *out, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < cols; j++) out[r * cols + j] = x[r * cols + j] + bias[j];
}

/* Attention for query rows [i0, i1) of one group: q [tq, d], k/v [tk, d], out [tq, d].
 * `scores` is caller-provided scratch of tk floats. Causal: row i sees keys j <= i + tk - tq. */
GR_CLONES
void gr_attention_rows(const float *q, const float *k, const float *v, float *out, float *scores,
                       size_t i0, size_t i1, size_t tq, size_t tk, size_t d, int causal) {
    const float scale = 1.0f / sqrtf((float)d);
    for (size_t i = i0; i < i1; i++) {
        size_t visible = causal ? i + tk - tq + 1 : tk;
        if (visible > tk) visible = tk;
        const float *qi = q + i * d;
        float m = -INFINITY;
        for (size_t j = 0; j < visible; j++) {
            float dot = 0.0f;
            for (size_t c = 0; c < d; c++) dot += qi[c] * k[j * d + c];
            scores[j] = dot * scale;
            if (scores[j] > m) m = scores[j];
        }
        float sum = 0.0f;
        for (size_t j = 0; j < visible; j++) {
            scores[j] = expf(scores[j] - m);
            sum += scores[j];
        }
        float *oi = out + i * d;
        memset(oi, 0, d * sizeof(float));
        const float inv = 1.0f / sum;
        for (size_t j = 0; j < visible; j++) {
            const float p = scores[j] * inv;
            for (size_t c = 0; c < d; c++) oi[c] += p * v[j * d + c];
        }
    }
}
