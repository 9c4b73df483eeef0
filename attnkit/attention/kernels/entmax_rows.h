// Alpha-entmax forward of one row (part of sparse_rows.cpp).
//
// p = (x - tau)_+^beta with x = (alpha - 1) (z - max z), beta = 1 / (alpha - 1) and tau such
// that p sums to one. tau solves ||(x - tau)_+||_beta = 1, a convex decreasing function of tau,
// so Newton steps from the left stay left of the root and converge quadratically; a bracket
// [lo, hi] catches the steps that rounding throws off (they bisect instead).
//   1. Start: the largest of four lower bounds: -1, the power-mean bound of the row, a bound
//      from its keys above a level (subset_bound), and the threshold of its 32 lane maxima
//      (long rows; fewer keys, lower threshold; often close).
//   2. Passes over the row, each followed by a step on the norm:
//      * rough passes (float32 rows) compute the powers to ~2e-5 and store nothing: about half
//        the work of an exact pass. Each takes a Halley step (third order); they run while the
//        error that the step leaves is predicted too large for the finish below, and they
//        never end a solve. A row starts with one unless its lane maxima's own support is
//        small (then their threshold is likely close and an exact pass may end the solve);
//      * exact passes store e = g^(beta - 1) per key, g = (x - tau)_+, and take Newton steps.
//   3. Once the next step d is small (beta |d| <= 1e-3 in float32 rows), the weights at
//      tau + d follow from e to second order, e (g - beta d + beta (beta - 1) d^2 / 2g) / mass,
//      with the slope p^(2 - alpha) = p mass^(alpha - 1) / (g - d) for the backward pass.
// Float32 rows compute the exact powers in float, 8 lanes, of the gap carried to double
// precision (x - tau rounded, plus its rounding error from an exact product and sum): a weight p
// is then off by about |ln p| 1e-7 relatively, whatever beta. Float64 rows compute in double.
// The weights come from exact passes only: rough ones change the path to tau, not the result.

#pragma once

namespace {

using attnkit_fastmath::exp_f;
using attnkit_fastmath::log_f;
using attnkit_fastmath::pow_d;
using attnkit_fastmath::pow_near_one;
using attnkit_lanes::lanes_sum;

// How far the mean of n keys of one sign, summed in T over the W lanes of a vector (about n / W
// additions a lane, then W across), can be off its exact value: a bound lowers by this much
// to stay a lower bound (at alpha = 2 Jensen's bounds below can equal the threshold).
template <typename T>
double mean_slack(double n, double mean) {
  constexpr int W = attnkit_lanes::Vec<T>::size;
  return (n / W + W + 3.0) * std::numeric_limits<T>::epsilon() * std::abs(mean);
}

// A lower bound of the threshold of the padded row buf[0:kp] (shifted by m) from its keys above
// the level v = 0.4 lo between the power-mean bound lo and 0: tau >= mean_v(x) - n_v^(-scale)
// (Jensen's inequality on those n_v keys), less the rounding of the float sums. On peaked rows
// it is much closer than lo (a rough pass fewer); otherwise it is lo.
template <typename T>
double subset_bound(const T* buf, int64_t kp, T m, double scale, double lo,
                    CountPowers& count_power) {
  using V = typename attnkit_lanes::Vec<T>::type;
  constexpr int W = attnkit_lanes::Vec<T>::size;
  const T sc = static_cast<T>(scale), level = static_cast<T>(0.4 * lo);
  V sum = V{}, count = V{};
  for (int64_t i = 0; i < kp; i += W) {
    const V x = sc * (load(buf + i) - m);  // -inf stays -inf
    const auto above = x > level;
    sum += above ? x : V{};
    count += above ? V{} + T(1) : V{};
  }
  const double n = lanes_sum<T>(count);
  if (!(n > 0.0)) return lo;
  const double mean = lanes_sum<T>(sum) / n;
  return std::max(lo, mean - mean_slack<T>(n, mean) - count_power(n, scale));
}

// The unnormalised weight at tau + d of a key with gap g at tau and power e (see the top); V is
// float, double or a vector. Keys off the support at tau (g <= 0) that enter at tau + d < tau
// get 0 and are left to the caller: e is 0 there, and half_curv / g would make 0 * inf.
template <typename V, typename T>
ATTNKIT_ALWAYS_INLINE inline V weight_at(V g, V e, double d, double beta, double half_curv) {
  const V zero = V{};
  const auto in = ((g - static_cast<T>(d)) > static_cast<T>(1e-30)) & (g > static_cast<T>(1e-30));
  const V safe = in ? g : zero + T(1);
  return in ? e * (g - static_cast<T>(beta * d) + static_cast<T>(half_curv) / safe) : zero;
}

// The weight p = pu / mass and its slope s = p^(2 - alpha) = p mass^(alpha - 1) / (g - d).
template <typename V, typename T>
ATTNKIT_ALWAYS_INLINE inline void normalised(V pu, V g, double d, double inv_mass,
                                             double slope_scale, V& p, V& s) {
  const V zero = V{};
  const auto in = pu > zero;
  p = pu * static_cast<T>(inv_mass);
  s = in ? p * static_cast<T>(slope_scale) / (in ? g - static_cast<T>(d) : zero + T(1)) : zero;
}

// Step 1 (see the top): the start and the bracket of r's threshold. False for a row of only
// -inf (zeros written: nothing to solve).
template <typename T>
bool entmax_start(RowSolve<T>& r) {
  const T* z = r.z;
  const int64_t k = r.k;
  T* const buf = r.buf;
  T* const e = r.e;
  using V = typename attnkit_lanes::Vec<T>::type;
  constexpr int W = attnkit_lanes::Vec<T>::size;
  constexpr int L = attnkit_lanes::kMaxLanes;
  attnkit_lanes::load_row(z, k, buf);
  const int64_t kp = attnkit_lanes::padded(k);
  T lane_max[L];
  const T m = attnkit_lanes::lane_maxima(buf, kp, lane_max);
  if (m == -attnkit_lanes::inf<T>()) {
    std::fill(r.out, r.out + k, T(0));
    if (r.slope != nullptr) std::fill(r.slope, r.slope + k, T(0));
    return false;
  }
  const double scale = r.alpha - 1.0;
  // 1. Lower bounds: power means of the row, of subsets of it and of the lane maxima, and
  // the lane maxima's root.
  // Power-mean bound mean(x) - n^(1 - alpha) over the n finite keys of x[0:kp].
  const auto power_mean = [&](const T* x, int64_t kp_x, double& n) {
    const V ninf = attnkit_lanes::splat(-attnkit_lanes::inf<T>()), zero = V{};
    V sum = zero, count = zero;
    for (int64_t i = 0; i < kp_x; i += W) {
      const V xi = load(x + i);
      const auto finite = xi > ninf;
      sum += finite ? xi - m : zero;
      count += finite ? zero + T(1) : zero;
    }
    n = lanes_sum<T>(count);
    const double mean = scale * lanes_sum<T>(sum) / n;
    return mean - mean_slack<T>(n, mean) - (*r.powers)(n, scale);
  };
  double n_row = 0.0, n_sub = 0.0;  // finite keys (not k: masked keys must not change the path)
  const double lo_row = power_mean(buf, kp, n_row);
  double lo_sub = -1.0, hi = 0.0, d = 0.0;
  PowerSums ps;
  double tau_sub = lo_sub;
  int sub_support = L;  // lane maxima in the support of their own threshold
  if (n_row > 2 * L) {  // short rows skip the lane maxima: their passes cost as much
    lo_sub = std::max(lo_sub, power_mean(lane_max, L, n_sub));
    tau_sub = newton_solve(lane_max, L, m, scale, lo_sub, 1e-3, 1e-3, lo_sub, hi, e, ps,
                                  d) + d;
    sub_support = static_cast<int>(std::count_if(e + L, e + 2 * L, [&](T g) { return g > d; }));
  }
  double lo = std::max({-1.0, subset_bound(buf, kp, m, scale, lo_row, *r.powers), lo_sub});
  const bool single = std::is_same<T, float>::value;
  r.kp = kp;
  r.m = m;
  r.scale = scale;
  r.tau = std::max(tau_sub, lo);
  r.lo = lo;
  r.hi = 0.0;
  r.tol = single ? 1e-8 : 1e-18;
  r.floor = single ? 1e-7 : 1e-14;
  r.rough = single ? kMaxRough : 0;
  // A row with a few lane maxima in their own support likely holds few more keys there, and
  // their threshold is then close: an exact pass may end the solve at once.
  r.next_rough = single && sub_support > kRoughSupport;
  return true;
}

// The sum of a row's vectors in double lanes (a float vector's halves widened), for the mass
// that normalises the weights: a float sum of many keys would be off by up to ~1e-5 relatively
// on rows of thousands. Adding zeros (keys masked at the end of a row) changes no bit.
template <typename T>
struct WideSum;

template <>
struct WideSum<double> {
  attnkit_fastmath::vdouble acc = {};
  ATTNKIT_ALWAYS_INLINE void add(attnkit_fastmath::vdouble v) { acc += v; }
  double total() const { return (acc[0] + acc[1]) + (acc[2] + acc[3]); }
};

template <>
struct WideSum<float> {
  attnkit_fastmath::vdouble low = {}, high = {};
  ATTNKIT_ALWAYS_INLINE void add(attnkit_fastmath::vfloat v) {
    attnkit_fastmath::vfloat4 a, b;
    std::memcpy(&a, &v, sizeof a);
    std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
    low += __builtin_convertvector(a, attnkit_fastmath::vdouble);
    high += __builtin_convertvector(b, attnkit_fastmath::vdouble);
  }
  double total() const {
    const attnkit_fastmath::vdouble s = low + high;
    return (s[0] + s[1]) + (s[2] + s[3]);
  }
};

// Step 3: the weights (and slopes) of r at r.tau + r.d.
template <typename T>
void entmax_finish(const RowSolve<T>& r) {
  using V = typename attnkit_lanes::Vec<T>::type;
  constexpr int W = attnkit_lanes::Vec<T>::size;
  const T* z = r.z;
  const int64_t k = r.k, kp = r.kp;
  const T m = r.m;
  T* const out = r.out;
  T* const slope = r.slope;
  T* const e = r.e;
  const double scale = r.scale, beta = 1.0 / scale, tau = r.tau, d = r.d;
  const PowerSums& ps = r.ps;
  const double half_curv = 0.5 * beta * (beta - 1.0) * d * d;
  // The unnormalised weights (second order) into e, over the gaps gs of the last pass, and
  // their sum in the layout of the other passes.
  T* const gs = e + kp;
  WideSum<T> acc;
  for (int64_t i = 0; i < kp; i += W) {
    const V pu = weight_at<V, T>(load(gs + i), load(e + i), d, beta, half_curv);
    std::memcpy(e + i, &pu, sizeof pu);
    acc.add(pu);
  }
  const double mass = std::max(acc.total(), kTiny);
  const double inv_mass = 1.0 / mass, slope_scale = pow_near_one(mass, scale);  // mass^(alpha - 1)
  // Keys near the threshold, where the expansion's third-order term t = third (d / g)^3,
  // relative to p, moves the slope s = p^(2 - alpha) = g^(beta - 1) by (2 - alpha) s t =
  // (2 - alpha) third d^3 g^(beta - 4) > 1e-8 (only possible for beta < 4): their p and s are
  // computed exactly, in double (rare: few keys sit that close).
  const double third = std::abs(beta * (beta - 1.0) * (beta - 2.0)) / 6.0;
  const double d3 = std::abs(d * d * d);
  // A key is near when g < near = bound^(1 / (4 - beta)), i.e. g^(4 - beta) < bound; as every
  // g <= 1 (x <= 0, tau >= -1), g^4 >= bound for the nearest key rules the whole row out.
  const double bound = (1.0 - scale) * third * d3 * 1e8;
  const double low4 = ps.low * ps.low * ps.low * ps.low;
  double near = 0.0;  // in float where it can (a cut-off: 1e-3 more is as good)
  if (beta < 4.0 && bound > 0.0 && low4 < bound) {
    near = bound > 1e-30 ? 1.001 * attnkit_fastmath::exp_f(static_cast<float>(
                                        attnkit_fastmath::log_f(static_cast<float>(bound)) /
                                        (4.0 - beta)))
                         : pow_d(bound, 1.0 / (4.0 - beta));
  }
  const auto exact_at = [&](int64_t j) {
    const double gap = scale * static_cast<double>(z[j] - m) - tau - d;
    const double p = gap > kTiny ? pow_d(gap, beta) * inv_mass : 0.0;
    out[j] = static_cast<T>(p);
    if (slope != nullptr) slope[j] = static_cast<T>(gap > kTiny ? p * slope_scale / gap : 0.0);
  };
  const bool any_near = ps.low < near;
  // A last step to the left (d < 0, from the rounding-level stop) can bring keys within |d|
  // of tau into the support: their tiny weights are computed exactly too.
  const bool any_enter = d < 0.0 && ps.high > d;
  const auto flagged = [&](auto g) {
    return ((g > 0) & (g < static_cast<T>(near))) | ((g <= static_cast<T>(1e-30)) &
                                                     (g > static_cast<T>(d)));
  };
  int64_t i = 0;
  for (; i + W <= k; i += W) {
    V p, s;
    const V g = load(gs + i);
    normalised<V, T>(load(e + i), g, d, inv_mass, slope_scale, p, s);
    std::memcpy(out + i, &p, sizeof p);
    if (slope != nullptr) std::memcpy(slope + i, &s, sizeof s);
    if (any_near || any_enter) {
      const V flag = flagged(g) ? V{} + T(1) : V{};
      if (lanes_sum<T>(flag) > 0) {
        for (int l = 0; l < W; ++l) {
          if (flag[l] > 0) exact_at(i + l);
        }
      }
    }
  }
  for (; i < k; ++i) {
    T p, s;
    normalised<T, T>(e[i], gs[i], d, inv_mass, slope_scale, p, s);
    out[i] = p;
    if (slope != nullptr) slope[i] = s;
    if ((any_near || any_enter) && flagged(gs[i])) exact_at(i);
  }
}

// Alpha-entmax of one row (see RowSolve).
template <typename T>
void entmax_row(RowSolve<T> r) {
  if (!entmax_start(r)) return;
  while (!entmax_pass(r)) {
  }
  entmax_finish(r);
}

// Alpha-entmax of two rows of the same length, their passes in one loop while both run: the
// same operations as entmax_row for each, so the same bits.
template <typename T>
void entmax_row_pair(RowSolve<T> a, RowSolve<T> b) {
  bool run_a = entmax_start(a), run_b = entmax_start(b);
  const bool has_a = run_a, has_b = run_b;
  while (run_a && run_b) {
    if (std::is_same<T, float>::value && a.next_rough && b.next_rough) {
      if constexpr (std::is_same<T, float>::value) {
        RoughAcc acc_a(a.m, a.scale, a.tau, 1.0 / a.scale);
        RoughAcc acc_b(b.m, b.scale, b.tau, 1.0 / b.scale);
        rough_pass_pair(a.buf, b.buf, a.kp, acc_a, acc_b);
        a.rs = acc_a.sums();
        b.rs = acc_b.sums();
        entmax_advance_rough(a);
        entmax_advance_rough(b);
      }
    } else if (!a.next_rough && !b.next_rough) {
      PowerAcc<T> acc_a(a.m, a.scale, a.tau, 1.0 / a.scale - 1.0);
      PowerAcc<T> acc_b(b.m, b.scale, b.tau, 1.0 / b.scale - 1.0);
      power_pass_pair(a.buf, b.buf, a.kp, acc_a, acc_b, a.e, b.e);
      a.ps = acc_a.sums();
      b.ps = acc_b.sums();
      run_a = !entmax_advance(a);
      run_b = !entmax_advance(b);
    } else {
      run_a = !entmax_pass(a);
      run_b = !entmax_pass(b);
    }
  }
  while (run_a) run_a = !entmax_pass(a);
  while (run_b) run_b = !entmax_pass(b);
  if (has_a) entmax_finish(a);
  if (has_b) entmax_finish(b);
}

}  // namespace
