// All-pairs quantile Huber loss per predicted quantile, value and gradient, over rows in parallel.
//
// The same algorithm and float64 arithmetic as `_qr_kernel._kernel` (numba), row for row, so the results are
// bit-identical: sort a row's predictions, merge them against the token's ascending targets three times
// (interleaved, branch-free) to get #{z < theta - kappa}, #{z < theta}, #{z <= theta + kappa}, then closed
// forms from prefix sums of z and z^2. Two differences make it ~2x faster inside a training step:
//   - the rows are split over OpenMP threads. Built with -fopenmp, this library resolves libgomp.so.1 to the
//     copy torch has already loaded, so it runs on torch's own worker threads (the caller passes
//     torch.get_num_threads()) instead of a second pool competing with them;
//   - each row is sorted by an LSD radix sort of (order-preserving float bits, index) pairs instead of a
//     comparison sort: 4 branch-free passes over 200 keys beat numpy's argsort here.
// The DVPO regularisers (forward and backward) are here too, split over tokens the same way.
// Compiled on first use by `_qr_native.py`; without a compiler the numba kernels run instead.

#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

namespace {

// Unsigned key with the same order as the float (negative floats reversed); NaN sorts last, as in numpy.
inline uint32_t key_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline uint32_t key_bits(double f) { return key_bits(static_cast<float>(f)); }

template <typename T>
void qr_rows(const T* theta, int64_t R, int64_t N, const double* z, int64_t M, const int64_t* row_token,
             const double* taus, double kappa, T* loss, T* grad, int nthreads) {
    const double inv_m = 1.0 / static_cast<double>(M);
    const double inv_k = kappa > 0.0 ? 1.0 / kappa : 0.0;
    const double half_inv_k = 0.5 * inv_k;
    const double inf = std::numeric_limits<double>::infinity();
#pragma omp parallel num_threads(nthreads)
    {
        std::vector<uint32_t> key_a(N), key_b(N), idx_a(N), idx_b(N);
        std::vector<int64_t> perm(N), cnt_a(N + 1), cnt_b(N + 1), cnt_c(N + 1);
        std::vector<double> t(N + 1), zr(M + 1), q1(M + 1, 0.0), q2(M + 1, 0.0);
        t[N] = inf;
        zr[M] = inf;
        int64_t last = -1;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; ++r) {
            const T* th_r = theta + r * N;
            const int64_t tok = row_token[r];
            if (tok != last) {  // targets and prefix sums once per token (its rows are consecutive)
                last = tok;
                const double* zt = z + tok * M;
                for (int64_t j = 0; j < M; ++j) {
                    const double zj = zt[j];
                    zr[j] = zj;
                    q1[j + 1] = q1[j] + zj;
                    q2[j + 1] = q2[j] + zj * zj;
                }
            }
            // Radix sort. For float64 rows the key is the float32 rounding: a coarser order is still a valid
            // merge order only if it is exact, so float64 rows go through an exact insertion fix-up below.
            uint32_t hist[4][256];
            std::memset(hist, 0, sizeof(hist));
            for (int64_t i = 0; i < N; ++i) {
                const uint32_t k = key_bits(th_r[i]);
                key_a[i] = k;
                idx_a[i] = static_cast<uint32_t>(i);
                hist[0][k & 255u]++;
                hist[1][(k >> 8) & 255u]++;
                hist[2][(k >> 16) & 255u]++;
                hist[3][k >> 24]++;
            }
            uint32_t *src_k = key_a.data(), *src_i = idx_a.data(), *dst_k = key_b.data(), *dst_i = idx_b.data();
            for (int p = 0; p < 4; ++p) {
                const int shift = 8 * p;
                uint32_t sum = 0;
                for (int d = 0; d < 256; ++d) {
                    const uint32_t c = hist[p][d];
                    hist[p][d] = sum;
                    sum += c;
                }
                for (int64_t i = 0; i < N; ++i) {
                    const uint32_t k = src_k[i];
                    const uint32_t pos = hist[p][(k >> shift) & 255u]++;
                    dst_k[pos] = k;
                    dst_i[pos] = src_i[i];
                }
                std::swap(src_k, dst_k);
                std::swap(src_i, dst_i);
            }
            for (int64_t k = 0; k < N; ++k) {
                perm[k] = static_cast<int64_t>(src_i[k]);
                t[k] = static_cast<double>(th_r[perm[k]]);
            }
            if (sizeof(T) == 8) {  // float64: values equal in float32 may be out of order; insertion sort fixes it
                for (int64_t k = 1; k < N; ++k) {
                    const double v = t[k];
                    const int64_t pk = perm[k];
                    int64_t j = k - 1;
                    while (j >= 0 && t[j] > v) {
                        t[j + 1] = t[j];
                        perm[j + 1] = perm[j];
                        --j;
                    }
                    t[j + 1] = v;
                    perm[j + 1] = pk;
                }
            }
            // Three merges, interleaved and branch-free (see `_qr_kernel._kernel`); the +inf sentinels t[N]
            // and zr[M] hold the finished ones in place.
            int64_t ia = 0, ib = 0, ic = 0, ja = 0, jb = 0, jc = 0;
            for (int64_t s = 0; s < N + M; ++s) {
                const int64_t la = zr[ja] < t[ia] - kappa;
                const int64_t lb = zr[jb] < t[ib];
                const int64_t lc = zr[jc] <= t[ic] + kappa;
                cnt_a[ia] = ja;
                cnt_b[ib] = jb;
                cnt_c[ic] = jc;
                ja += la;
                jb += lb;
                jc += lc;
                ia += 1 - la;
                ib += 1 - lb;
                ic += 1 - lc;
            }
            T* loss_r = loss + r * N;
            T* grad_r = grad + r * N;
            for (int64_t k = 0; k < N; ++k) {
                const int64_t i = perm[k];
                const double th = t[k];
                const double tau = taus[i];
                const int64_t a = cnt_a[k], b = cnt_b[k], c = cnt_c[k];
                if (kappa == 0.0) {
                    const double s_lo = q1[b];
                    const double s_hi = q1[M] - s_lo;
                    loss_r[i] = static_cast<T>(((1.0 - tau) * (th * static_cast<double>(b) - s_lo)
                                                + tau * (s_hi - th * static_cast<double>(M - b))) * inv_m);
                    grad_r[i] = static_cast<T>((static_cast<double>(b) - tau * static_cast<double>(M)) * inv_m);
                    continue;
                }
                const double n1 = static_cast<double>(a), n2 = static_cast<double>(b - a);
                const double n3 = static_cast<double>(c - b), n4 = static_cast<double>(M - c);
                const double s1_1 = q1[a];
                const double s1_2 = q1[b] - q1[a];
                const double s1_3 = q1[c] - q1[b];
                const double s1_4 = q1[M] - q1[c];
                const double s2_2 = q2[b] - q2[a];
                const double s2_3 = q2[c] - q2[b];
                const double quad2 = s2_2 - 2.0 * th * s1_2 + th * th * n2;
                const double quad3 = s2_3 - 2.0 * th * s1_3 + th * th * n3;
                loss_r[i] = static_cast<T>(((1.0 - tau) * ((th - 0.5 * kappa) * n1 - s1_1 + quad2 * half_inv_k)
                                            + tau * (quad3 * half_inv_k + s1_4 - (th + 0.5 * kappa) * n4)) * inv_m);
                grad_r[i] = static_cast<T>(((1.0 - tau) * (n1 + (th * n2 - s1_2) * inv_k)
                                            + tau * ((th * n3 - s1_3) * inv_k - n4)) * inv_m);
            }
        }
    }
}

// The DVPO regularisers (`_qr_kernel._reg_forward` / `_reg_backward`), the same float64 arithmetic token for
// token, tokens split over torch's threads. `order` is numpy's argsort of the float32 head mean, computed by the
// caller exactly as the numba path does (ties included), so the two paths agree bit for bit.
struct TokenStats {
    double m_lo_p, v_lo_p, m_up_p, v_up_p, m_lo_z, v_lo_z, m_up_z, v_up_z, m_p, m_z, lo, up;
};

inline void mean_var(const double* x, int64_t lo, int64_t hi, double* m_out, double* v_out) {
    const int64_t k = hi - lo;
    double m = 0.0;
    for (int64_t j = lo; j < hi; ++j) m += x[j];
    m /= static_cast<double>(k);
    double v = 0.0;
    for (int64_t j = lo; j < hi; ++j) {
        const double d = x[j] - m;
        v += d * d;
    }
    *m_out = m;
    *v_out = v / static_cast<double>(k);
}

template <typename T>
TokenStats token_stats(const T* p, const double* zt, const int64_t* ord, int64_t H, int64_t N, int64_t ka,
                          int64_t kb, int64_t kl, int64_t ku, double* ens, double* es) {
    for (int64_t i = 0; i < N; ++i) {
        double s = 0.0;
        for (int64_t h = 0; h < H; ++h) s += static_cast<double>(p[h * N + i]);
        ens[i] = s / static_cast<double>(H);
    }
    for (int64_t j = 0; j < N; ++j) es[j] = ens[ord[j]];
    TokenStats st;
    double unused;
    mean_var(es, 0, ka, &st.m_lo_p, &st.v_lo_p);
    mean_var(es, N - kb, N, &st.m_up_p, &st.v_up_p);
    mean_var(zt, 0, ka, &st.m_lo_z, &st.v_lo_z);
    mean_var(zt, N - kb, N, &st.m_up_z, &st.v_up_z);
    mean_var(es, 0, N, &st.m_p, &unused);
    mean_var(zt, 0, N, &st.m_z, &unused);
    st.lo = 0.0;
    st.up = 0.0;
    if (N >= 3) {
        for (int64_t j = 0; j < kl; ++j) st.lo += es[j + 2] - 2.0 * es[j + 1] + es[j];
        for (int64_t j = N - 2 - ku; j < N - 2; ++j) st.up += es[j + 2] - 2.0 * es[j + 1] + es[j];
    }
    return st;
}

inline double relu0(double x) { return x > 0.0 ? x : 0.0; }  // Python's max(0.0, x)

template <typename T>
void reg_forward(const T* p, int64_t n, int64_t H, int64_t N, const double* z, const int64_t* order, int64_t ka,
                 int64_t kb, int64_t kl, int64_t ku, double ml, double mu, double* terms, double* stats,
                 int nthreads) {
    const int64_t n_pairs = H * (H - 1) / 2;
#pragma omp parallel num_threads(nthreads)
    {
        std::vector<double> ens(N), es(N);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < n; ++t) {
            const T* pt = p + t * H * N;
            const TokenStats st = token_stats<T>(pt, z + t * N, order + t * N, H, N, ka, kb, kl, ku, ens.data(),
                                                    es.data());
            double d = st.m_lo_p - st.m_lo_z;
            terms[0 * n + t] = d * d;
            d = st.m_up_p - st.m_up_z;
            terms[1 * n + t] = d * d;
            terms[2 * n + t] = relu0(st.m_z - st.m_p);
            terms[3 * n + t] = relu0(st.v_lo_p - (1.0 - ml) * st.v_lo_z) + relu0((1.0 + mu) * st.v_up_z - st.v_up_p);
            terms[4 * n + t] = N >= 3 ? relu0(st.lo / static_cast<double>(kl)) + relu0(-st.up / static_cast<double>(ku))
                                      : 0.0;
            double cons = 0.0;
            if (H > 1) {
                for (int64_t i = 0; i < N; ++i) {
                    double s = 0.0, s2 = 0.0;
                    for (int64_t h = 0; h < H; ++h) {
                        const double x = static_cast<double>(pt[h * N + i]);
                        s += x;
                        s2 += x * x;
                    }
                    cons += static_cast<double>(H) * s2 - s * s;
                }
                cons /= static_cast<double>(n_pairs * N);
            }
            terms[5 * n + t] = cons;
            int64_t crossed = 0;
            for (int64_t i = 0; i < N - 1; ++i) crossed += ens[i + 1] < ens[i];
            double* so = stats + t * 7;
            so[0] = st.v_lo_p;
            so[1] = st.v_up_p;
            so[2] = st.v_lo_z;
            so[3] = st.v_up_z;
            so[4] = static_cast<double>(crossed);
            so[5] = st.m_p;
            so[6] = st.m_z;
        }
    }
}

template <typename T>
void reg_backward(const T* p, int64_t n, int64_t H, int64_t N, const double* z, const int64_t* order, const double* g,
                  int64_t ka, int64_t kb, int64_t kl, int64_t ku, double ml, double mu, T* dp, int nthreads) {
    const int64_t n_pairs = H * (H - 1) / 2;
    const double dka = static_cast<double>(ka), dkb = static_cast<double>(kb);
    const double dkl = static_cast<double>(kl), dku = static_cast<double>(ku), dH = static_cast<double>(H);
#pragma omp parallel num_threads(nthreads)
    {
        std::vector<double> ens(N), es(N), des(N);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < n; ++t) {
            const T* pt = p + t * H * N;
            const int64_t* ord = order + t * N;
            const TokenStats st = token_stats<T>(pt, z + t * N, ord, H, N, ka, kb, kl, ku, ens.data(), es.data());
            for (int64_t j = 0; j < N; ++j) des[j] = 0.0;
            double c = g[0 * n + t] * 2.0 * (st.m_lo_p - st.m_lo_z) / dka;  // cvar
            for (int64_t j = 0; j < ka; ++j) des[j] += c;
            c = g[1 * n + t] * 2.0 * (st.m_up_p - st.m_up_z) / dkb;  // gain
            for (int64_t j = N - kb; j < N; ++j) des[j] += c;
            if (st.m_z - st.m_p > 0.0) {  // shift
                c = -g[2 * n + t] / static_cast<double>(N);
                for (int64_t j = 0; j < N; ++j) des[j] += c;
            }
            if (st.v_lo_p - (1.0 - ml) * st.v_lo_z > 0.0) {  // shape, lower tail
                c = g[3 * n + t] * 2.0 / dka;
                for (int64_t j = 0; j < ka; ++j) des[j] += c * (es[j] - st.m_lo_p);
            }
            if ((1.0 + mu) * st.v_up_z - st.v_up_p > 0.0) {  // shape, upper tail
                c = -g[3 * n + t] * 2.0 / dkb;
                for (int64_t j = N - kb; j < N; ++j) des[j] += c * (es[j] - st.m_up_p);
            }
            if (N >= 3) {  // curvature
                if (st.lo > 0.0) {
                    c = g[4 * n + t] / dkl;
                    for (int64_t j = 0; j < kl; ++j) {
                        des[j] += c;
                        des[j + 1] -= 2.0 * c;
                        des[j + 2] += c;
                    }
                }
                if (-st.up > 0.0) {
                    c = -g[4 * n + t] / dku;
                    for (int64_t j = N - 2 - ku; j < N - 2; ++j) {
                        des[j] += c;
                        des[j + 1] -= 2.0 * c;
                        des[j + 2] += c;
                    }
                }
            }
            for (int64_t j = 0; j < N; ++j) ens[ord[j]] = des[j] / dH;
            c = H > 1 ? g[5 * n + t] * 2.0 / static_cast<double>(n_pairs * N) : 0.0;
            T* dpt = dp + t * H * N;
            for (int64_t i = 0; i < N; ++i) {
                double s = 0.0;
                for (int64_t h = 0; h < H; ++h) s += static_cast<double>(pt[h * N + i]);
                for (int64_t h = 0; h < H; ++h)
                    dpt[h * N + i] = static_cast<T>(ens[i] + c * (dH * static_cast<double>(pt[h * N + i]) - s));
            }
        }
    }
}

}  // namespace

extern "C" {

void qr_rows_f32(const float* theta, int64_t R, int64_t N, const double* z, int64_t M, const int64_t* row_token,
                 const double* taus, double kappa, float* loss, float* grad, int nthreads) {
    qr_rows<float>(theta, R, N, z, M, row_token, taus, kappa, loss, grad, nthreads);
}

void qr_rows_f64(const double* theta, int64_t R, int64_t N, const double* z, int64_t M, const int64_t* row_token,
                 const double* taus, double kappa, double* loss, double* grad, int nthreads) {
    qr_rows<double>(theta, R, N, z, M, row_token, taus, kappa, loss, grad, nthreads);
}

void reg_forward_f32(const float* p, int64_t n, int64_t H, int64_t N, const double* z, const int64_t* order,
                     int64_t ka, int64_t kb, int64_t kl, int64_t ku, double ml, double mu, double* terms,
                     double* stats, int nthreads) {
    reg_forward<float>(p, n, H, N, z, order, ka, kb, kl, ku, ml, mu, terms, stats, nthreads);
}

void reg_forward_f64(const double* p, int64_t n, int64_t H, int64_t N, const double* z, const int64_t* order,
                     int64_t ka, int64_t kb, int64_t kl, int64_t ku, double ml, double mu, double* terms,
                     double* stats, int nthreads) {
    reg_forward<double>(p, n, H, N, z, order, ka, kb, kl, ku, ml, mu, terms, stats, nthreads);
}

void reg_backward_f32(const float* p, int64_t n, int64_t H, int64_t N, const double* z, const int64_t* order,
                      const double* g, int64_t ka, int64_t kb, int64_t kl, int64_t ku, double ml, double mu,
                      float* dp, int nthreads) {
    reg_backward<float>(p, n, H, N, z, order, g, ka, kb, kl, ku, ml, mu, dp, nthreads);
}

void reg_backward_f64(const double* p, int64_t n, int64_t H, int64_t N, const double* z, const int64_t* order,
                      const double* g, int64_t ka, int64_t kb, int64_t kl, int64_t ku, double ml, double mu,
                      double* dp, int nthreads) {
    reg_backward<double>(p, n, H, N, z, order, g, ka, kb, kl, ku, ml, mu, dp, nthreads);
}

}
