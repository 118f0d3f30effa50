/*
 * mlitb's own WebAssembly SIMD kernels for TF.js's wasm backend: the gradients where it is
 * slowest on small conv nets (engine/wasm_kernels.js registers them; why and what
 * they replace is written there). Built by `python -m mlitb.web.wasm_build` into
 * engine/wasm_kernels_bin.js (zig cc, wasm32, SIMD128, no libc; the test suite checks
 * that the committed module is this file's build).
 *
 * Every array lives in this module's own memory: the JavaScript side copies the inputs in
 * (zero-padded as each kernel wants them) and the result out. Layouts are NHWC, f32.
 */
#include <wasm_simd128.h>

#define EXPORT(name) __attribute__((export_name(#name)))
typedef float f32;

#define MAC(acc, a, b) acc = wasm_f32x4_add(acc, wasm_f32x4_mul(a, b))
#define ADD_TO(ptr, acc) wasm_v128_store(ptr, wasm_f32x4_add(wasm_v128_load(ptr), acc))

/*
 * Filter gradient of a convolution (strides sh, sw; no dilation), as one product of matrices:
 *   dw[r, f] = sum over positions p = (n, oy, ox) of x[n, oy*sh + kh, ox*sw + kw, c] * dy[p, f]
 * with r = (kh, kw, c) a row of the [KH, KW, C, F] filter.
 *   x:   [N, H, W, C], padded already (the convolution's own zero padding included)
 *   dy:  [N, OH, OW, Fp], Fp = F rounded up to 4 (zero columns past F)
 *   off: R4 ints, row r's element relative to a position's corner, (kh * W + kw) * C + c;
 *        R = KH * KW * C rounded up to 4 with offsets 0 (scratch rows)
 *   dw:  [R4, Fp], zeroed by the caller; the caller keeps rows < R and columns < F
 * A block of 4 rows x 8 columns is 8 accumulators (4 x 4 when Fp is not a multiple of 8).
 * Summed in two stages, each image's positions first, then the images: one float32
 * accumulator over 6,272 products (a batch of 32 at 14 x 14) drifts ~1e-5 from PyTorch's
 * blocked sums.
 */
EXPORT(filter_grad)
void filter_grad(const f32 *x, const f32 *dy, const int *off, f32 *dw, int N, int H, int W, int C, int OH,
                 int OW, int Fp, int R4, int sh, int sw) {
  const int step = sw * C;  // floats from one output position's corner to the next
  for (int n = 0; n < N; n++) {  // an image at a time: its x and dy stay in the caches
    for (int rb = 0; rb < R4; rb += 4) {
      const int o0 = off[rb], o1 = off[rb + 1], o2 = off[rb + 2], o3 = off[rb + 3];
      int fb = 0;
      for (; fb + 8 <= Fp; fb += 8) {
        v128_t a00 = wasm_f32x4_splat(0), a01 = a00, a10 = a00, a11 = a00;
        v128_t a20 = a00, a21 = a00, a30 = a00, a31 = a00;
        for (int oy = 0; oy < OH; oy++) {
          const f32 *p = x + ((n * H + oy * sh) * W) * C;
          const f32 *g = dy + ((n * OH + oy) * OW) * Fp + fb;
          for (int ox = 0; ox < OW; ox++, p += step, g += Fp) {
            const v128_t g0 = wasm_v128_load(g), g1 = wasm_v128_load(g + 4);
            const v128_t s0 = wasm_v128_load32_splat(p + o0), s1 = wasm_v128_load32_splat(p + o1);
            const v128_t s2 = wasm_v128_load32_splat(p + o2), s3 = wasm_v128_load32_splat(p + o3);
            MAC(a00, s0, g0); MAC(a01, s0, g1);
            MAC(a10, s1, g0); MAC(a11, s1, g1);
            MAC(a20, s2, g0); MAC(a21, s2, g1);
            MAC(a30, s3, g0); MAC(a31, s3, g1);
          }
        }
        f32 *d = dw + rb * Fp + fb;
        ADD_TO(d, a00); ADD_TO(d + 4, a01);
        ADD_TO(d + Fp, a10); ADD_TO(d + Fp + 4, a11);
        ADD_TO(d + 2 * Fp, a20); ADD_TO(d + 2 * Fp + 4, a21);
        ADD_TO(d + 3 * Fp, a30); ADD_TO(d + 3 * Fp + 4, a31);
      }
      for (; fb < Fp; fb += 4) {
        v128_t a0 = wasm_f32x4_splat(0), a1 = a0, a2 = a0, a3 = a0;
        for (int oy = 0; oy < OH; oy++) {
          const f32 *p = x + ((n * H + oy * sh) * W) * C;
          const f32 *g = dy + ((n * OH + oy) * OW) * Fp + fb;
          for (int ox = 0; ox < OW; ox++, p += step, g += Fp) {
            const v128_t g0 = wasm_v128_load(g);
            MAC(a0, wasm_v128_load32_splat(p + o0), g0);
            MAC(a1, wasm_v128_load32_splat(p + o1), g0);
            MAC(a2, wasm_v128_load32_splat(p + o2), g0);
            MAC(a3, wasm_v128_load32_splat(p + o3), g0);
          }
        }
        f32 *d = dw + rb * Fp + fb;
        ADD_TO(d, a0); ADD_TO(d + Fp, a1); ADD_TO(d + 2 * Fp, a2); ADD_TO(d + 3 * Fp, a3);
      }
    }
  }
}

/*
 * Input gradient of a strided convolution (stride > 1; no dilation), scattered:
 *   dx[n, oy*sh + kh, ox*sw + kw, 0:Cp] += w[kh, kw, 0:F, 0:Cp]^T . dy[n, oy, ox, 0:F]
 * Every product is a useful one (the dilated-dy convolution multiplies sh * sw times as
 * many, mostly by the zeros between dy's rows and columns).
 *   dy: [N, OH, OW, F];  w: [KH, KW, F, Cp], Cp = C rounded up to 4 (zero columns past C)
 *   dx: [N, Hp, Wp, Cp], Hp = (OH - 1) * sh + KH, Wp likewise: the padded input as far as
 *       the windows reach, zeroed by the caller (who crops the padding off)
 * 8 (or 4) channels of dx in registers, summed over F.
 */
EXPORT(input_grad)
void input_grad(const f32 *dy, const f32 *w, f32 *dx, int N, int OH, int OW, int F, int Hp, int Wp, int Cp,
                int KH, int KW, int sh, int sw) {
  for (int n = 0; n < N; n++)
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++) {
        const f32 *g = dy + ((n * OH + oy) * OW + ox) * F;
        for (int kh = 0; kh < KH; kh++)
          for (int kw = 0; kw < KW; kw++) {
            f32 *t = dx + ((n * Hp + oy * sh + kh) * Wp + ox * sw + kw) * Cp;
            const f32 *wk = w + (kh * KW + kw) * F * Cp;
            int cb = 0;
            for (; cb + 8 <= Cp; cb += 8) {
              v128_t a0 = wasm_v128_load(t + cb), a1 = wasm_v128_load(t + cb + 4);
              const f32 *q = wk + cb;
              for (int f = 0; f < F; f++, q += Cp) {
                const v128_t s = wasm_v128_load32_splat(g + f);
                MAC(a0, s, wasm_v128_load(q));
                MAC(a1, s, wasm_v128_load(q + 4));
              }
              wasm_v128_store(t + cb, a0);
              wasm_v128_store(t + cb + 4, a1);
            }
            for (; cb < Cp; cb += 4) {
              v128_t a0 = wasm_v128_load(t + cb);
              const f32 *q = wk + cb;
              for (int f = 0; f < F; f++, q += Cp) MAC(a0, wasm_v128_load32_splat(g + f), wasm_v128_load(q));
              wasm_v128_store(t + cb, a0);
            }
          }
      }
}

/*
 * Max-pool gradient: dx[window's first maximum] += dy[window], for each window and
 * channel (PyTorch's rule, which TF.js wasm 4.22's own kernel breaks: a window of only
 * negative values sent its gradient to its first element).
 *   x: [N, H, W, C]; dy: [N, OH, OW, C]; dx: [N, H, W, C], zeroed here
 *   windows fh x fw every sh, sw; top / left: padding rows / columns (never the maximum)
 * With C a multiple of 4, four channels go at once (a lane's maximum moves only on a
 * strictly greater value, so the first of equal maxima wins, as in the scalar loop).
 */
EXPORT(maxpool_grad)
void maxpool_grad(const f32 *x, const f32 *dy, f32 *dx, int N, int H, int W, int C, int OH, int OW, int fh,
                  int fw, int sh, int sw, int top, int left) {
  __builtin_memset(dx, 0, (unsigned long)N * H * W * C * sizeof(f32));
  const v128_t lanes = wasm_i32x4_make(0, 1, 2, 3);
  for (int n = 0; n < N; n++)
    for (int oy = 0; oy < OH; oy++) {
      int y0 = oy * sh - top, y1 = y0 + fh;
      if (y0 < 0) y0 = 0;
      if (y1 > H) y1 = H;
      for (int ox = 0; ox < OW; ox++) {
        int x0 = ox * sw - left, x1 = x0 + fw;
        if (x0 < 0) x0 = 0;
        if (x1 > W) x1 = W;
        if (y0 >= y1 || x0 >= x1) continue;
        const f32 *g = dy + ((n * OH + oy) * OW + ox) * C;
        int c = 0;
        if ((C & 3) == 0)
          for (; c < C; c += 4) {
            const int i0 = ((n * H + y0) * W + x0) * C + c;
            v128_t best = wasm_v128_load(x + i0);
            v128_t at = wasm_i32x4_add(wasm_i32x4_splat(i0), lanes);
            for (int y = y0; y < y1; y++)
              for (int xx = x0; xx < x1; xx++) {
                const int i = ((n * H + y) * W + xx) * C + c;
                const v128_t v = wasm_v128_load(x + i);
                const v128_t more = wasm_f32x4_gt(v, best);
                best = wasm_v128_bitselect(v, best, more);
                at = wasm_v128_bitselect(wasm_i32x4_add(wasm_i32x4_splat(i), lanes), at, more);
              }
            dx[wasm_i32x4_extract_lane(at, 0)] += g[c];
            dx[wasm_i32x4_extract_lane(at, 1)] += g[c + 1];
            dx[wasm_i32x4_extract_lane(at, 2)] += g[c + 2];
            dx[wasm_i32x4_extract_lane(at, 3)] += g[c + 3];
          }
        for (; c < C; c++) {
          int at = ((n * H + y0) * W + x0) * C + c;
          f32 best = x[at];
          for (int y = y0; y < y1; y++)
            for (int xx = x0; xx < x1; xx++) {
              const int i = ((n * H + y) * W + xx) * C + c;
              if (x[i] > best) {
                best = x[i];
                at = i;
              }
            }
          dx[at] += g[c];
        }
      }
    }
}

/*
 * Batched product of matrices, either side transposed (TF.js wasm 4.22's own BatchMatMul is
 * a plain loop for every batched or transposed product: 0.4-0.8 G multiply-adds a second,
 * against XNNPACK's 5-8 for a single untransposed one, which engine/wasm_kernels.js keeps):
 *   c[t] = op(a[t]) . op(b[t]) for t < batch, op() a transpose where ta / tb is set
 *   a: [M, K] ([K, M] when ta) per t, sa floats apart (0: one matrix for every t)
 *   b: [K, N] ([N, K] when tb) per t, sb floats apart (0: likewise)
 *   c: [M, Np] per t, Np = N rounded up to 4 (the caller keeps columns < N)
 *   pack: K * Np floats of scratch: b[t] as [K, Np], zero columns past N
 * A block of 4 rows x 8 columns is 8 accumulators; each sums its K products in order.
 */
EXPORT(matmul)
void matmul(const f32 *a, const f32 *b, f32 *c, f32 *pack, int batch, int M, int K, int N, int Np, int ta,
            int tb, int sa, int sb) {
  const int ars = ta ? 1 : K, acs = ta ? M : 1;  // a[t]'s (i, k) at i * ars + k * acs
  for (int t = 0; t < batch; t++) {
    const f32 *A = a + t * sa, *Bt = b + t * sb;
    if (t == 0 || sb)
      for (int k = 0; k < K; k++) {
        f32 *row = pack + k * Np;
        if (tb)
          for (int j = 0; j < N; j++) row[j] = Bt[j * K + k];
        else
          __builtin_memcpy(row, Bt + k * N, (unsigned long)N * sizeof(f32));
        for (int j = N; j < Np; j++) row[j] = 0;
      }
    f32 *C = c + t * M * Np;
    int i = 0;
    for (; i + 4 <= M; i += 4) {
      const f32 *a0 = A + i * ars, *a1 = a0 + ars, *a2 = a1 + ars, *a3 = a2 + ars;
      int j = 0;
      for (; j + 8 <= Np; j += 8) {
        v128_t c00 = wasm_f32x4_splat(0), c01 = c00, c10 = c00, c11 = c00;
        v128_t c20 = c00, c21 = c00, c30 = c00, c31 = c00;
        const f32 *q = pack + j;
        for (int k = 0; k < K; k++, q += Np) {
          const v128_t g0 = wasm_v128_load(q), g1 = wasm_v128_load(q + 4);
          const int o = k * acs;
          const v128_t s0 = wasm_v128_load32_splat(a0 + o), s1 = wasm_v128_load32_splat(a1 + o);
          const v128_t s2 = wasm_v128_load32_splat(a2 + o), s3 = wasm_v128_load32_splat(a3 + o);
          MAC(c00, s0, g0); MAC(c01, s0, g1);
          MAC(c10, s1, g0); MAC(c11, s1, g1);
          MAC(c20, s2, g0); MAC(c21, s2, g1);
          MAC(c30, s3, g0); MAC(c31, s3, g1);
        }
        f32 *d = C + i * Np + j;
        wasm_v128_store(d, c00); wasm_v128_store(d + 4, c01);
        wasm_v128_store(d + Np, c10); wasm_v128_store(d + Np + 4, c11);
        wasm_v128_store(d + 2 * Np, c20); wasm_v128_store(d + 2 * Np + 4, c21);
        wasm_v128_store(d + 3 * Np, c30); wasm_v128_store(d + 3 * Np + 4, c31);
      }
      for (; j < Np; j += 4) {
        v128_t c0 = wasm_f32x4_splat(0), c1 = c0, c2 = c0, c3 = c0;
        const f32 *q = pack + j;
        for (int k = 0; k < K; k++, q += Np) {
          const v128_t g0 = wasm_v128_load(q);
          const int o = k * acs;
          MAC(c0, wasm_v128_load32_splat(a0 + o), g0);
          MAC(c1, wasm_v128_load32_splat(a1 + o), g0);
          MAC(c2, wasm_v128_load32_splat(a2 + o), g0);
          MAC(c3, wasm_v128_load32_splat(a3 + o), g0);
        }
        f32 *d = C + i * Np + j;
        wasm_v128_store(d, c0); wasm_v128_store(d + Np, c1);
        wasm_v128_store(d + 2 * Np, c2); wasm_v128_store(d + 3 * Np, c3);
      }
    }
    for (; i < M; i++) {  // the rows past the last block of 4
      const f32 *ai = A + i * ars;
      for (int j = 0; j < Np; j += 4) {
        v128_t c0 = wasm_f32x4_splat(0);
        const f32 *q = pack + j;
        for (int k = 0; k < K; k++, q += Np) MAC(c0, wasm_v128_load32_splat(ai + k * acs), wasm_v128_load(q));
        wasm_v128_store(C + i * Np + j, c0);
      }
    }
  }
}

/*
 * Batch norm in training, per channel c over the N x P values of a batch (P = H x W):
 *   x: [N, P, C];  stats: [2, C], the batch's mean and biased variance (bn_stats)
 * Every per-channel sum is summed in two stages, each image's P positions and then the N
 * images, as engine/tfjs_engine.js's `perExample` does for the other ops: one float32 sum
 * over N x P put statistics ~1e-5 off PyTorch's (the replay tolerance's concern).
 */

/* acc[0:C] = sum over p < P of row p of x ([P, C]), minus sub[c] and squared when sub */
static void position_sums(const f32 *x, const f32 *sub, f32 *acc, int P, int C) {
  int c = 0;
  for (; c + 4 <= C; c += 4) {
    v128_t s = wasm_f32x4_splat(0);
    const f32 *p = x + c;
    if (sub) {
      const v128_t m = wasm_v128_load(sub + c);
      for (int i = 0; i < P; i++, p += C) {
        const v128_t d = wasm_f32x4_sub(wasm_v128_load(p), m);
        MAC(s, d, d);
      }
    } else
      for (int i = 0; i < P; i++, p += C) s = wasm_f32x4_add(s, wasm_v128_load(p));
    wasm_v128_store(acc + c, s);
  }
  for (; c < C; c++) {
    f32 s = 0;
    for (int i = 0; i < P; i++) {
      const f32 v = sub ? x[i * C + c] - sub[c] : x[i * C + c];
      s += sub ? v * v : v;
    }
    acc[c] = s;
  }
}

/* stats = [mean, biased variance] per channel, each a mean of the images' means */
EXPORT(bn_stats)
void bn_stats(const f32 *x, f32 *stats, f32 *acc, int N, int P, int C) {
  f32 *mean = stats, *var = stats + C;
  for (int c = 0; c < C; c++) mean[c] = var[c] = 0;
  for (int n = 0; n < N; n++) {
    position_sums(x + (long)n * P * C, 0, acc, P, C);
    for (int c = 0; c < C; c++) mean[c] += acc[c] / P;
  }
  for (int c = 0; c < C; c++) mean[c] /= N;
  for (int n = 0; n < N; n++) {
    position_sums(x + (long)n * P * C, mean, acc, P, C);
    for (int c = 0; c < C; c++) var[c] += acc[c] / P;
  }
  for (int c = 0; c < C; c++) var[c] /= N;
}

/* y = (x - mean) * scale + bias, coef = [mean, scale, bias] ([3, C]); M = N x P rows */
EXPORT(bn_apply)
void bn_apply(const f32 *x, const f32 *coef, f32 *y, int M, int C) {
  const f32 *mean = coef, *scale = coef + C, *bias = coef + 2 * C;
  for (int i = 0; i < M; i++, x += C, y += C) {
    int c = 0;
    for (; c + 4 <= C; c += 4) {
      const v128_t d = wasm_f32x4_sub(wasm_v128_load(x + c), wasm_v128_load(mean + c));
      wasm_v128_store(y + c, wasm_f32x4_add(wasm_f32x4_mul(d, wasm_v128_load(scale + c)), wasm_v128_load(bias + c)));
    }
    for (; c < C; c++) y[c] = (x[c] - mean[c]) * scale[c] + bias[c];
  }
}

/*
 * The gradients of y = (x - mean) * inv * gain + bias with the batch's mean and
 * inv = 1 / sqrt(var + eps) (both functions of x):
 *   dbias = sum dy;  dgain = sum dy * xhat, xhat = (x - mean) * inv
 *   dx = gain * inv * (dy - dbias / M - xhat * dgain / M),  M = N x P
 *   coef = [mean, inv, gain] ([3, C]);  sums: [2, C] out, dbias then dgain;  acc: 2C scratch
 */
EXPORT(bn_grad)
void bn_grad(const f32 *x, const f32 *dy, const f32 *coef, f32 *dx, f32 *sums, f32 *acc, int N, int P, int C) {
  const f32 *mean = coef, *inv = coef + C, *gain = coef + 2 * C;
  f32 *sdy = sums, *sdx = sums + C, *a0 = acc, *a1 = acc + C;
  for (int c = 0; c < C; c++) sdy[c] = sdx[c] = 0;
  for (int n = 0; n < N; n++) {
    const f32 *xn = x + (long)n * P * C, *gn = dy + (long)n * P * C;
    int c = 0;
    for (; c + 4 <= C; c += 4) {
      const v128_t m = wasm_v128_load(mean + c), iv = wasm_v128_load(inv + c);
      v128_t s0 = wasm_f32x4_splat(0), s1 = s0;
      for (int i = 0; i < P; i++) {
        const v128_t g = wasm_v128_load(gn + i * C + c);
        const v128_t h = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(xn + i * C + c), m), iv);
        s0 = wasm_f32x4_add(s0, g);
        MAC(s1, g, h);
      }
      wasm_v128_store(a0 + c, s0);
      wasm_v128_store(a1 + c, s1);
    }
    for (; c < C; c++) {
      f32 s0 = 0, s1 = 0;
      for (int i = 0; i < P; i++) {
        const f32 g = gn[i * C + c];
        s0 += g;
        s1 += g * ((xn[i * C + c] - mean[c]) * inv[c]);
      }
      a0[c] = s0;
      a1[c] = s1;
    }
    for (c = 0; c < C; c++) {
      sdy[c] += a0[c];
      sdx[c] += a1[c];
    }
  }
  const long M = (long)N * P;
  for (int c = 0; c < C; c++) {  // a0: dbias / M; a1: dgain / M
    a0[c] = sdy[c] / M;
    a1[c] = sdx[c] / M;
  }
  for (long i = 0; i < M; i++, x += C, dy += C, dx += C) {
    int c = 0;
    for (; c + 4 <= C; c += 4) {
      const v128_t h = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(x + c), wasm_v128_load(mean + c)),
                                      wasm_v128_load(inv + c));
      const v128_t t = wasm_f32x4_sub(wasm_f32x4_sub(wasm_v128_load(dy + c), wasm_v128_load(a0 + c)),
                                      wasm_f32x4_mul(h, wasm_v128_load(a1 + c)));
      wasm_v128_store(dx + c, wasm_f32x4_mul(wasm_f32x4_mul(wasm_v128_load(gain + c), wasm_v128_load(inv + c)), t));
    }
    for (; c < C; c++) {
      const f32 h = (x[c] - mean[c]) * inv[c];
      dx[c] = gain[c] * inv[c] * (dy[c] - a0[c] - h * a1[c]);
    }
  }
}

/*
 * GELU, the exact (erf) form, and its gradient, 4 floats at a time:
 *   y = x Phi(x),  dy/dx = Phi(x) + x phi(x),  Phi(x) = erfc(-x / sqrt 2) / 2,  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
 * erfc(z) for z >= 0 is Numerical Recipes' Chebyshev fit (erfcc: t exp(-z^2 - 1.26551223 + t P(t)),
 * t = 1 / (1 + z / 2), relative error below 1.2e-7 everywhere), so Phi keeps its relative
 * precision in the far left tail, where 1 + erf(x / sqrt 2) would cancel. exp is Cephes'
 * expf (2^k e^r, |r| <= ln 2 / 2, a degree-6 polynomial; ~1 ulp). TF.js wasm ran the same
 * as ~12 ops (Erf and Exp scalar, one element at a time), a sixth of the charlm step.
 */
static inline v128_t exp4(v128_t y) {
  // pmin / pmax: x86's minps / maxps (min / max's NaN rules cost V8 a sequence of them)
  y = wasm_f32x4_pmax(wasm_f32x4_pmin(y, wasm_f32x4_splat(88.0f)), wasm_f32x4_splat(-87.0f));
  // k = round(y / ln 2) by the 1.5 * 2^23 trick: k's integer sits in the sum's low bits
  const v128_t magic = wasm_f32x4_splat(12582912.0f);
  const v128_t sum = wasm_f32x4_add(wasm_f32x4_mul(y, wasm_f32x4_splat(1.44269504088896341f)), magic);
  const v128_t k = wasm_f32x4_sub(sum, magic);
  v128_t r = wasm_f32x4_sub(y, wasm_f32x4_mul(k, wasm_f32x4_splat(0.693359375f)));
  r = wasm_f32x4_sub(r, wasm_f32x4_mul(k, wasm_f32x4_splat(-2.12194440e-4f)));
  v128_t p = wasm_f32x4_splat(1.9875691500e-4f);
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.3981999507e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(8.3334519073e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(4.1665795894e-2f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.6666665459e-1f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(5.0000001201e-1f));
  p = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_mul(wasm_f32x4_mul(p, r), r), r), wasm_f32x4_splat(1.0f));
  // 2^k as a float's bits: (k + 127) << 23, k from the sum's bits less the magic's
  const v128_t ki = wasm_i32x4_sub(sum, wasm_i32x4_splat(0x4B400000));
  return wasm_f32x4_mul(p, wasm_i32x4_shl(wasm_i32x4_add(ki, wasm_i32x4_splat(127)), 23));
}

/* Phi(x), the standard normal's distribution function, 4 at a time */
static inline v128_t phi_cdf4(v128_t x) {
  const v128_t z = wasm_f32x4_mul(wasm_f32x4_abs(x), wasm_f32x4_splat(0.70710678118654752f));
  const v128_t one = wasm_f32x4_splat(1.0f);
  const v128_t t = wasm_f32x4_div(one, wasm_f32x4_add(one, wasm_f32x4_mul(z, wasm_f32x4_splat(0.5f))));
#define HORNER(c) p = wasm_f32x4_add(wasm_f32x4_mul(p, t), wasm_f32x4_splat(c))
  v128_t p = wasm_f32x4_splat(0.17087277f);
  HORNER(-0.82215223f); HORNER(1.48851587f); HORNER(-1.13520398f); HORNER(0.27886807f);
  HORNER(-0.18628806f); HORNER(0.09678418f); HORNER(0.37409196f); HORNER(1.00002368f);
#undef HORNER
  const v128_t e = wasm_f32x4_add(wasm_f32x4_sub(wasm_f32x4_splat(-1.26551223f), wasm_f32x4_mul(z, z)),
                                  wasm_f32x4_mul(t, p));
  const v128_t half_erfc = wasm_f32x4_mul(wasm_f32x4_mul(t, exp4(e)), wasm_f32x4_splat(0.5f));  // erfc(z) / 2
  // x >= 0: Phi = 1 - erfc(z) / 2;  x < 0: Phi = erfc(z) / 2
  return wasm_v128_bitselect(wasm_f32x4_sub(one, half_erfc), half_erfc, wasm_f32x4_ge(x, wasm_f32x4_splat(0)));
}

/* y = gelu(x) over n floats (n a multiple of 4: the caller pads) */
EXPORT(gelu)
void gelu(const f32 *x, f32 *y, int n) {
  for (int i = 0; i < n; i += 4) {
    const v128_t v = wasm_v128_load(x + i);
    wasm_v128_store(y + i, wasm_f32x4_mul(v, phi_cdf4(v)));
  }
}

/* dx = dy (Phi(x) + x phi(x)) over n floats (a multiple of 4) */
EXPORT(gelu_grad)
void gelu_grad(const f32 *x, const f32 *dy, f32 *dx, int n) {
  const v128_t c = wasm_f32x4_splat(0.39894228040143268f);  // 1 / sqrt(2 pi)
  for (int i = 0; i < n; i += 4) {
    const v128_t v = wasm_v128_load(x + i);
    const v128_t pdf = wasm_f32x4_mul(exp4(wasm_f32x4_mul(wasm_f32x4_mul(v, v), wasm_f32x4_splat(-0.5f))), c);
    const v128_t d = wasm_f32x4_add(phi_cdf4(v), wasm_f32x4_mul(v, pdf));
    wasm_v128_store(dx + i, wasm_f32x4_mul(wasm_v128_load(dy + i), d));
  }
}

/*
 * Layer norm over the last axis (D floats a row; R = N x P rows, P rows an example):
 *   y = (x - mean) * inv * gain + bias,  mean and inv = 1 / sqrt(var + eps) of the row
 * and its gradients, with xhat = (x - mean) * inv and g = dy * gain:
 *   dx = inv * (g - mean(g) - xhat * mean(g * xhat)) per row
 *   dgain = sum over rows of dy * xhat, dbias = sum of dy: each example's rows, then the examples
 * A row's sums go 4 lanes at a time (D a multiple of 4 then), then across the lanes.
 */
static inline f32 lanes_sum(v128_t v) {
  return wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1) + wasm_f32x4_extract_lane(v, 2) +
         wasm_f32x4_extract_lane(v, 3);
}

/* mean and inv of one row */
static void row_stats(const f32 *x, int D, f32 eps, f32 *mean, f32 *inv) {
  v128_t s = wasm_f32x4_splat(0);
  int c = 0;
  f32 tail = 0;
  for (; c + 4 <= D; c += 4) s = wasm_f32x4_add(s, wasm_v128_load(x + c));
  for (; c < D; c++) tail += x[c];
  const f32 m = (lanes_sum(s) + tail) / D;
  const v128_t mv = wasm_f32x4_splat(m);
  s = wasm_f32x4_splat(0);
  tail = 0;
  for (c = 0; c + 4 <= D; c += 4) {
    const v128_t d = wasm_f32x4_sub(wasm_v128_load(x + c), mv);
    MAC(s, d, d);
  }
  for (; c < D; c++) tail += (x[c] - m) * (x[c] - m);
  *mean = m;
  *inv = 1.0f / __builtin_sqrtf((lanes_sum(s) + tail) / D + eps);
}

EXPORT(ln_forward)
void ln_forward(const f32 *x, const f32 *gain, const f32 *bias, f32 *y, int R, int D, f32 eps) {
  for (int r = 0; r < R; r++, x += D, y += D) {
    f32 m, iv;
    row_stats(x, D, eps, &m, &iv);
    const v128_t mv = wasm_f32x4_splat(m), ivv = wasm_f32x4_splat(iv);
    int c = 0;
    for (; c + 4 <= D; c += 4) {
      const v128_t h = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(x + c), mv), ivv);
      wasm_v128_store(y + c, wasm_f32x4_add(wasm_f32x4_mul(h, wasm_v128_load(gain + c)), wasm_v128_load(bias + c)));
    }
    for (; c < D; c++) y[c] = (x[c] - m) * iv * gain[c] + bias[c];
  }
}

/* sums: [2, D] out (dgain, dbias); acc: 2D scratch */
EXPORT(ln_grad)
void ln_grad(const f32 *x, const f32 *dy, const f32 *gain, f32 *dx, f32 *sums, f32 *acc, int N, int P, int D,
             f32 eps) {
  f32 *dgain = sums, *dbias = sums + D, *ag = acc, *ab = acc + D;
  for (int c = 0; c < D; c++) dgain[c] = dbias[c] = 0;
  for (int n = 0; n < N; n++) {
    for (int c = 0; c < D; c++) ag[c] = ab[c] = 0;
    for (int p = 0; p < P; p++, x += D, dy += D, dx += D) {
      f32 m, iv;
      row_stats(x, D, eps, &m, &iv);
      const v128_t mv = wasm_f32x4_splat(m), ivv = wasm_f32x4_splat(iv);
      v128_t sg = wasm_f32x4_splat(0), sgh = sg;  // sums of g and g * xhat over the row
      f32 tg = 0, tgh = 0;
      int c = 0;
      for (; c + 4 <= D; c += 4) {
        const v128_t h = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(x + c), mv), ivv);
        const v128_t d = wasm_v128_load(dy + c), g = wasm_f32x4_mul(d, wasm_v128_load(gain + c));
        sg = wasm_f32x4_add(sg, g);
        MAC(sgh, g, h);
        wasm_v128_store(ag + c, wasm_f32x4_add(wasm_v128_load(ag + c), wasm_f32x4_mul(d, h)));
        wasm_v128_store(ab + c, wasm_f32x4_add(wasm_v128_load(ab + c), d));
      }
      for (; c < D; c++) {
        const f32 h = (x[c] - m) * iv, g = dy[c] * gain[c];
        tg += g;
        tgh += g * h;
        ag[c] += dy[c] * h;
        ab[c] += dy[c];
      }
      const v128_t mg = wasm_f32x4_splat((lanes_sum(sg) + tg) / D), mgh = wasm_f32x4_splat((lanes_sum(sgh) + tgh) / D);
      for (c = 0; c + 4 <= D; c += 4) {
        const v128_t h = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(x + c), mv), ivv);
        const v128_t g = wasm_f32x4_mul(wasm_v128_load(dy + c), wasm_v128_load(gain + c));
        wasm_v128_store(dx + c, wasm_f32x4_mul(ivv, wasm_f32x4_sub(wasm_f32x4_sub(g, mg), wasm_f32x4_mul(h, mgh))));
      }
      const f32 mgs = (lanes_sum(sg) + tg) / D, mghs = (lanes_sum(sgh) + tgh) / D;
      for (; c < D; c++) {
        const f32 h = (x[c] - m) * iv, g = dy[c] * gain[c];
        dx[c] = iv * (g - mgs - h * mghs);
      }
    }
    for (int c = 0; c < D; c++) {
      dgain[c] += ag[c];
      dbias[c] += ab[c];
    }
  }
}

/* out[c] = sum over the N images of (sum over its P positions of x[n, p, c]): a bias's
 * gradient in the two stages of the rest (TF.js wasm's sum over H and W transposed first) */
EXPORT(channel_sums)
void channel_sums(const f32 *x, f32 *out, f32 *acc, int N, int P, int C) {
  for (int c = 0; c < C; c++) out[c] = 0;
  for (int n = 0; n < N; n++) {
    position_sums(x + (long)n * P * C, 0, acc, P, C);
    for (int c = 0; c < C; c++) out[c] += acc[c];
  }
}
