// DVPO's critic-loss kernels on CPU, as torch operators (`torch.ops.dvpo_lab.*`); built on first use by
// `kernels.py` through `torch.utils.cpp_extension.load`.
//
// qr_rows: the all-pairs quantile Huber loss per predicted quantile, value and gradient in one pass (DVPO paper
//   Eq. 3; QR-DQN). Sort a row's predictions, merge them against the token's ascending targets three times
//   (interleaved, branch-free) to get #{z < theta - kappa}, #{z < theta}, #{z <= theta + kappa}, then closed
//   forms from prefix sums of z and z^2, all in float64. A row is sorted by an LSD radix sort of (order-preserving
//   float32 bits, index) pairs: 4 branch-free passes over 200 keys beat a comparison sort here.
// reg_forward / reg_backward: the regularisers cvar, gain, shift, shape, curv, cons (DVPO paper Eqs. 5-10) and
//   their diagnostics, per token, in float64; the head-mean ensemble is sorted by the same radix sort, and its
//   order is returned so that the backward pass reuses it.
//
// Rows (tokens) are independent and split over torch's intra-op threads by `at::parallel_for` (built with
// -fopenmp, the library resolves libgomp.so.1 to the copy torch has loaded: one thread pool), so no result
// depends on the thread count. Built with -ffp-contract=off: no fused multiply-adds, the same numbers whatever
// the compiler's target.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kGrain = 16;  // rows (tokens) per thread at least: a row costs a few microseconds

// Unsigned key with the same order as the float (negative floats reversed); NaN sorts last.
inline uint32_t key_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline uint32_t key_bits(double f) { return key_bits(static_cast<float>(f)); }

// Scratch space of one thread for `sort_row`.
struct SortScratch {
    std::vector<uint32_t> key_a, key_b, idx_a, idx_b;
    explicit SortScratch(int64_t n) : key_a(n), key_b(n), idx_a(n), idx_b(n) {}
};

// Ascending order of x[0..N): perm[k] = index of the k-th smallest, t[k] = x[perm[k]] in float64; equal values
// keep their index order (both passes are stable). The radix key is the float32 rounding: for float64 input a
// coarser order is not exact, so an insertion pass (cheap on nearly sorted data) finishes the job.
template <typename T>
void sort_row(const T* x, int64_t N, SortScratch& s, int64_t* perm, double* t) {
    uint32_t hist[4][256];
    std::memset(hist, 0, sizeof(hist));
    for (int64_t i = 0; i < N; ++i) {
        const uint32_t k = key_bits(x[i]);
        s.key_a[i] = k;
        s.idx_a[i] = static_cast<uint32_t>(i);
        hist[0][k & 255u]++;
        hist[1][(k >> 8) & 255u]++;
        hist[2][(k >> 16) & 255u]++;
        hist[3][k >> 24]++;
    }
    uint32_t *src_k = s.key_a.data(), *src_i = s.idx_a.data(), *dst_k = s.key_b.data(), *dst_i = s.idx_b.data();
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
        t[k] = static_cast<double>(x[perm[k]]);
    }
    if (sizeof(T) == 8) {  // values equal in float32 may be out of order in float64
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
}

template <typename T>
void qr_rows_impl(const T* theta, int64_t R, int64_t N, const double* z, int64_t M, int64_t H, const double* taus,
                  double kappa, T* loss, T* grad) {
    const double inv_m = 1.0 / static_cast<double>(M);
    const double inv_k = kappa > 0.0 ? 1.0 / kappa : 0.0;
    const double half_inv_k = 0.5 * inv_k;
    const double inf = std::numeric_limits<double>::infinity();
    at::parallel_for(0, R, kGrain, [&](int64_t begin, int64_t end) {
        SortScratch scratch(N);
        std::vector<int64_t> perm(N), cnt_a(N + 1), cnt_b(N + 1), cnt_c(N + 1);
        std::vector<double> t(N + 1), zr(M + 1), q1(M + 1, 0.0), q2(M + 1, 0.0);
        t[N] = inf;  // sentinels: a finished merge stays in place
        zr[M] = inf;
        int64_t last = -1;
        for (int64_t r = begin; r < end; ++r) {
            const T* th_r = theta + r * N;
            const int64_t tok = r / H;
            if (tok != last) {  // targets and prefix sums once per token (its H rows are consecutive)
                last = tok;
                const double* zt = z + tok * M;
                for (int64_t j = 0; j < M; ++j) {
                    const double zj = zt[j];
                    zr[j] = zj;
                    q1[j + 1] = q1[j] + zj;
                    q2[j + 1] = q2[j] + zj * zj;
                }
            }
            sort_row<T>(th_r, N, scratch, perm.data(), t.data());
            // Three merges of the ascending predictions against the ascending targets, interleaved (independent
            // dependency chains) and branch-free: each step either advances the target pointer j (z_j below the
            // threshold) or records j as the count of prediction i and moves to i + 1.
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
                if (kappa == 0.0) {  // pinball loss
                    const double s_lo = q1[b];
                    const double s_hi = q1[M] - s_lo;
                    loss_r[i] = static_cast<T>(((1.0 - tau) * (th * static_cast<double>(b) - s_lo)
                                                + tau * (s_hi - th * static_cast<double>(M - b))) * inv_m);
                    grad_r[i] = static_cast<T>((static_cast<double>(b) - tau * static_cast<double>(M)) * inv_m);
                    continue;
                }
                // bands: z < th - kappa (linear), [th - kappa, th) and [th, th + kappa] (quadratic), above (linear)
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
    });
}

// The regularisers ---------------------------------------------------------------------------------------------

struct Tails {
    int64_t ka, kb, kl, ku;  // tail sizes over the N quantiles (ka, kb) and the N - 2 second differences (kl, ku)
    double ml, mu;           // shape margins
};

struct TokenStats {
    double m_lo_p, v_lo_p, m_up_p, v_up_p, m_lo_z, v_lo_z, m_up_z, v_up_z, m_p, m_z, lo, up;
};

// Mean and population variance of x[lo..hi).
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

// Head mean ens[i] of token p [H, N] (quantile order) and its ascending copy es, sorted into ord_out (the forward
// pass) or by the given order ord_in (the backward pass, ord_out null). Returns the tail and overall means and variances of es
// and the targets zt, and the sums of es's second differences over the lower (kl) and upper (ku) tails (0 when
// N < 3): what both passes need.
template <typename T>
TokenStats token_stats(const T* p, const double* zt, int64_t H, int64_t N, const Tails& k, SortScratch& s,
                       int64_t* ord_out, const int64_t* ord_in, double* ens, double* es) {
    for (int64_t i = 0; i < N; ++i) {
        double sum = 0.0;
        for (int64_t h = 0; h < H; ++h) sum += static_cast<double>(p[h * N + i]);
        ens[i] = sum / static_cast<double>(H);
    }
    if (ord_out != nullptr) {
        sort_row<double>(ens, N, s, ord_out, es);
    } else {
        for (int64_t j = 0; j < N; ++j) es[j] = ens[ord_in[j]];
    }
    TokenStats st;
    double unused;
    mean_var(es, 0, k.ka, &st.m_lo_p, &st.v_lo_p);
    mean_var(es, N - k.kb, N, &st.m_up_p, &st.v_up_p);
    mean_var(zt, 0, k.ka, &st.m_lo_z, &st.v_lo_z);
    mean_var(zt, N - k.kb, N, &st.m_up_z, &st.v_up_z);
    mean_var(es, 0, N, &st.m_p, &unused);
    mean_var(zt, 0, N, &st.m_z, &unused);
    st.lo = 0.0;
    st.up = 0.0;
    if (N >= 3) {
        for (int64_t j = 0; j < k.kl; ++j) st.lo += es[j + 2] - 2.0 * es[j + 1] + es[j];
        for (int64_t j = N - 2 - k.ku; j < N - 2; ++j) st.up += es[j + 2] - 2.0 * es[j + 1] + es[j];
    }
    return st;
}

inline double relu0(double x) { return x > 0.0 ? x : 0.0; }

template <typename T>
void reg_forward_impl(const T* p, int64_t n, int64_t H, int64_t N, const double* z, const Tails& k, double* terms,
                      double* stats, int64_t* order) {
    const int64_t n_pairs = H * (H - 1) / 2;
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        SortScratch scratch(N);
        std::vector<double> ens(N), es(N);
        for (int64_t t = begin; t < end; ++t) {
            const T* pt = p + t * H * N;
            const TokenStats st = token_stats<T>(pt, z + t * N, H, N, k, scratch, order + t * N, nullptr,
                                                 ens.data(), es.data());
            double d = st.m_lo_p - st.m_lo_z;
            terms[0 * n + t] = d * d;                      // cvar, Eq. 5
            d = st.m_up_p - st.m_up_z;
            terms[1 * n + t] = d * d;                      // gain, Eq. 6
            terms[2 * n + t] = relu0(st.m_z - st.m_p);     // shift, Eq. 7
            terms[3 * n + t] = relu0(st.v_lo_p - (1.0 - k.ml) * st.v_lo_z)  // shape, Eq. 8
                               + relu0((1.0 + k.mu) * st.v_up_z - st.v_up_p);
            terms[4 * n + t] = N >= 3 ? relu0(st.lo / static_cast<double>(k.kl))  // curv, Eq. 9
                                            + relu0(-st.up / static_cast<double>(k.ku))
                                      : 0.0;
            double cons = 0.0;  // cons, Eq. 10: sum over head pairs of (p_h - p_g)^2 = H sum p^2 - (sum p)^2
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
    });
}

template <typename T>
void reg_backward_impl(const T* p, int64_t n, int64_t H, int64_t N, const double* z, const int64_t* order,
                       const double* g, const Tails& k, T* dp) {
    const int64_t n_pairs = H * (H - 1) / 2;
    const double dka = static_cast<double>(k.ka), dkb = static_cast<double>(k.kb);
    const double dkl = static_cast<double>(k.kl), dku = static_cast<double>(k.ku), dH = static_cast<double>(H);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        SortScratch scratch(0);  // unused: the order is given
        std::vector<double> ens(N), es(N), des(N);
        for (int64_t t = begin; t < end; ++t) {
            const T* pt = p + t * H * N;
            const int64_t* ord = order + t * N;
            const TokenStats st = token_stats<T>(pt, z + t * N, H, N, k, scratch, nullptr, ord, ens.data(), es.data());
            for (int64_t j = 0; j < N; ++j) des[j] = 0.0;
            double c = g[0 * n + t] * 2.0 * (st.m_lo_p - st.m_lo_z) / dka;  // cvar
            for (int64_t j = 0; j < k.ka; ++j) des[j] += c;
            c = g[1 * n + t] * 2.0 * (st.m_up_p - st.m_up_z) / dkb;  // gain
            for (int64_t j = N - k.kb; j < N; ++j) des[j] += c;
            if (st.m_z - st.m_p > 0.0) {  // shift (a ReLU's gradient is 0 at 0, as torch's)
                c = -g[2 * n + t] / static_cast<double>(N);
                for (int64_t j = 0; j < N; ++j) des[j] += c;
            }
            if (st.v_lo_p - (1.0 - k.ml) * st.v_lo_z > 0.0) {  // shape, lower tail
                c = g[3 * n + t] * 2.0 / dka;
                for (int64_t j = 0; j < k.ka; ++j) des[j] += c * (es[j] - st.m_lo_p);
            }
            if ((1.0 + k.mu) * st.v_up_z - st.v_up_p > 0.0) {  // shape, upper tail
                c = -g[3 * n + t] * 2.0 / dkb;
                for (int64_t j = N - k.kb; j < N; ++j) des[j] += c * (es[j] - st.m_up_p);
            }
            if (N >= 3) {  // curvature
                if (st.lo > 0.0) {
                    c = g[4 * n + t] / dkl;
                    for (int64_t j = 0; j < k.kl; ++j) {
                        des[j] += c;
                        des[j + 1] -= 2.0 * c;
                        des[j + 2] += c;
                    }
                }
                if (-st.up > 0.0) {
                    c = -g[4 * n + t] / dku;
                    for (int64_t j = N - 2 - k.ku; j < N - 2; ++j) {
                        des[j] += c;
                        des[j + 1] -= 2.0 * c;
                        des[j + 2] += c;
                    }
                }
            }
            for (int64_t j = 0; j < N; ++j) ens[ord[j]] = des[j] / dH;  // d/d ens in quantile order, per head
            c = H > 1 ? g[5 * n + t] * 2.0 / static_cast<double>(n_pairs * N) : 0.0;
            T* dpt = dp + t * H * N;
            for (int64_t i = 0; i < N; ++i) {
                double s = 0.0;
                for (int64_t h = 0; h < H; ++h) s += static_cast<double>(pt[h * N + i]);
                for (int64_t h = 0; h < H; ++h)
                    dpt[h * N + i] = static_cast<T>(ens[i] + c * (dH * static_cast<double>(pt[h * N + i]) - s));
            }
        }
    });
}

// Operators: checks, allocation, dispatch on the prediction dtype ----------------------------------------------

void check_pred(const at::Tensor& x, int64_t dim, const char* name) {
    TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
                " must be float32 or float64, got ", x.scalar_type());
    TORCH_CHECK(x.dim() == dim && x.is_contiguous(), name, " must be a contiguous ", dim, "-d tensor");
}

void check_f64(const at::Tensor& x, int64_t dim, const char* name) {
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kDouble && x.dim() == dim && x.is_contiguous(), name,
                " must be a contiguous float64 CPU ", dim, "-d tensor");
}

Tails check_tails(int64_t N, int64_t ka, int64_t kb, int64_t kl, int64_t ku, double ml, double mu) {
    TORCH_CHECK(ka >= 1 && ka <= N && kb >= 1 && kb <= N, "tail sizes ka, kb must be in [1, N]");
    TORCH_CHECK(N < 3 || (kl >= 1 && kl <= N - 2 && ku >= 1 && ku <= N - 2), "tail sizes kl, ku must be in [1, N-2]");
    TORCH_CHECK(kl >= 1 && ku >= 1, "tail sizes kl, ku must be >= 1");
    return Tails{ka, kb, kl, ku, ml, mu};
}

// theta [n * heads, N] (rows of a token consecutive), z [n, M] float64 ascending, taus [N] float64 ->
// (loss, d loss / d theta), both [n * heads, N] in theta's dtype.
std::tuple<at::Tensor, at::Tensor> qr_rows(const at::Tensor& theta, const at::Tensor& z, const at::Tensor& taus,
                                           int64_t heads, double kappa) {
    check_pred(theta, 2, "theta");
    check_f64(z, 2, "z");
    check_f64(taus, 1, "taus");
    const int64_t R = theta.size(0), N = theta.size(1), M = z.size(1);
    TORCH_CHECK(heads >= 1 && R == z.size(0) * heads, "theta must have heads * n rows for z's n targets rows, got ",
                R, " rows, heads=", heads, ", n=", z.size(0));
    TORCH_CHECK(taus.size(0) == N, "taus must have N=", N, " levels, got ", taus.size(0));
    TORCH_CHECK(kappa >= 0.0, "kappa must be >= 0, got ", kappa);
    TORCH_CHECK(M >= 1 || R == 0, "z needs at least one target per row");
    at::Tensor loss = at::empty_like(theta), grad = at::empty_like(theta);
    if (theta.scalar_type() == at::kFloat) {
        qr_rows_impl<float>(theta.const_data_ptr<float>(), R, N, z.const_data_ptr<double>(), M, heads,
                            taus.const_data_ptr<double>(), kappa, loss.mutable_data_ptr<float>(),
                            grad.mutable_data_ptr<float>());
    } else {
        qr_rows_impl<double>(theta.const_data_ptr<double>(), R, N, z.const_data_ptr<double>(), M, heads,
                             taus.const_data_ptr<double>(), kappa, loss.mutable_data_ptr<double>(),
                             grad.mutable_data_ptr<double>());
    }
    return {loss, grad};
}

// p [n, H, N], z [n, N] float64 ascending -> (terms [6, n], stats [n, 7], both float64; order [n, N] int64: the
// ascending order of each token's head mean, ties by index).
std::tuple<at::Tensor, at::Tensor, at::Tensor> reg_forward(const at::Tensor& p, const at::Tensor& z, int64_t ka,
                                                           int64_t kb, int64_t kl, int64_t ku, double ml, double mu) {
    check_pred(p, 3, "p");
    check_f64(z, 2, "z");
    const int64_t n = p.size(0), H = p.size(1), N = p.size(2);
    TORCH_CHECK(z.size(0) == n && z.size(1) == N, "z must be [n, N] = [", n, ", ", N, "]");
    TORCH_CHECK(H >= 1 && N >= 1, "p must have at least one head and one quantile");
    const Tails k = check_tails(N, ka, kb, kl, ku, ml, mu);
    const auto f64 = p.options().dtype(at::kDouble);
    at::Tensor terms = at::empty({6, n}, f64), stats = at::empty({n, 7}, f64);
    at::Tensor order = at::empty({n, N}, p.options().dtype(at::kLong));
    if (p.scalar_type() == at::kFloat) {
        reg_forward_impl<float>(p.const_data_ptr<float>(), n, H, N, z.const_data_ptr<double>(), k,
                                terms.mutable_data_ptr<double>(), stats.mutable_data_ptr<double>(),
                                order.mutable_data_ptr<int64_t>());
    } else {
        reg_forward_impl<double>(p.const_data_ptr<double>(), n, H, N, z.const_data_ptr<double>(), k,
                                 terms.mutable_data_ptr<double>(), stats.mutable_data_ptr<double>(),
                                 order.mutable_data_ptr<int64_t>());
    }
    return {terms, stats, order};
}

// dp[t, h, i] = sum_k g[k, t] d terms[k, t] / d p[t, h, i]; `order` from reg_forward, g [6, n] float64.
at::Tensor reg_backward(const at::Tensor& p, const at::Tensor& z, const at::Tensor& order, const at::Tensor& g,
                        int64_t ka, int64_t kb, int64_t kl, int64_t ku, double ml, double mu) {
    check_pred(p, 3, "p");
    check_f64(z, 2, "z");
    check_f64(g, 2, "g");
    const int64_t n = p.size(0), H = p.size(1), N = p.size(2);
    TORCH_CHECK(z.size(0) == n && z.size(1) == N, "z must be [n, N] = [", n, ", ", N, "]");
    TORCH_CHECK(order.scalar_type() == at::kLong && order.is_contiguous() && order.dim() == 2 && order.size(0) == n &&
                    order.size(1) == N,
                "order must be reg_forward's contiguous int64 [n, N]");
    TORCH_CHECK(g.size(0) == 6 && g.size(1) == n, "g must be [6, n]");
    const Tails k = check_tails(N, ka, kb, kl, ku, ml, mu);
    at::Tensor dp = at::empty_like(p);
    if (p.scalar_type() == at::kFloat) {
        reg_backward_impl<float>(p.const_data_ptr<float>(), n, H, N, z.const_data_ptr<double>(),
                                 order.const_data_ptr<int64_t>(), g.const_data_ptr<double>(), k,
                                 dp.mutable_data_ptr<float>());
    } else {
        reg_backward_impl<double>(p.const_data_ptr<double>(), n, H, N, z.const_data_ptr<double>(),
                                  order.const_data_ptr<int64_t>(), g.const_data_ptr<double>(), k,
                                  dp.mutable_data_ptr<double>());
    }
    return dp;
}

}  // namespace

TORCH_LIBRARY(dvpo_lab, m) {
    m.def("qr_rows(Tensor theta, Tensor z, Tensor taus, int heads, float kappa) -> (Tensor, Tensor)");
    m.def("reg_forward(Tensor p, Tensor z, int ka, int kb, int kl, int ku, float ml, float mu) -> "
          "(Tensor, Tensor, Tensor)");
    m.def("reg_backward(Tensor p, Tensor z, Tensor order, Tensor g, int ka, int kb, int kl, int ku, float ml, "
          "float mu) -> Tensor");
}

TORCH_LIBRARY_IMPL(dvpo_lab, CPU, m) {
    m.impl("qr_rows", &qr_rows);
    m.impl("reg_forward", &reg_forward);
    m.impl("reg_backward", &reg_backward);
}
