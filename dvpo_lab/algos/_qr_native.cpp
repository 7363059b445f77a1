// All-pairs quantile Huber loss per predicted quantile, value and gradient, over rows in parallel.
//
// The same algorithm and float64 arithmetic as `_qr_kernel._kernel` (numba), row for row, so the results are
// bit-identical: sort a row's predictions, merge them against the token's ascending targets three times
// (interleaved, branch-free) to get #{z < theta - kappa}, #{z < theta}, #{z <= theta + kappa}, then closed
// forms from prefix sums of z and z^2. Two differences make it ~2x faster inside a training step:
//   - the rows are split over OpenMP threads. Built with -fopenmp, this library resolves libgomp.so.1 to the
//     copy torch has already loaded, so it runs on torch's own worker threads (the count torch.set_num_threads
//     set) instead of a second pool competing with them;
//   - each row is sorted by an LSD radix sort of (order-preserving float bits, index) pairs instead of a
//     comparison sort: 4 branch-free passes over 200 keys beat numpy's argsort here.
// Compiled on first use by `_qr_native.py`; without a compiler the numba kernel runs instead.

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
             const double* taus, double kappa, T* loss, T* grad) {
    const double inv_m = 1.0 / static_cast<double>(M);
    const double inv_k = kappa > 0.0 ? 1.0 / kappa : 0.0;
    const double half_inv_k = 0.5 * inv_k;
    const double inf = std::numeric_limits<double>::infinity();
#pragma omp parallel
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

}  // namespace

extern "C" {

void qr_rows_f32(const float* theta, int64_t R, int64_t N, const double* z, int64_t M, const int64_t* row_token,
                 const double* taus, double kappa, float* loss, float* grad) {
    qr_rows<float>(theta, R, N, z, M, row_token, taus, kappa, loss, grad);
}

void qr_rows_f64(const double* theta, int64_t R, int64_t N, const double* z, int64_t M, const int64_t* row_token,
                 const double* taus, double kappa, double* loss, double* grad) {
    qr_rows<double>(theta, R, N, z, M, row_token, taus, kappa, loss, grad);
}

}
