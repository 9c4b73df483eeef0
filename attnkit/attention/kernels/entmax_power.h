// Alpha-entmax's passes over a row at a threshold tau (part of sparse_rows.cpp, see
// entmax_rows.h): the power sums of g = (x - tau)_+ that a Newton step needs, one row at a time
// or two rows in one loop. A pass is short on short rows and bound by the latency of its
// chain (log, exp, sums, then the scalar step); two independent rows in one loop fill it.

#pragma once

namespace {

using attnkit_fastmath::exp_d;
using attnkit_fastmath::exp_f;
using attnkit_fastmath::log_d;
using attnkit_fastmath::log_f;
using attnkit_fastmath::vdouble;
using attnkit_fastmath::vfloat;
using attnkit_lanes::lanes_sum;
using attnkit_lanes::load;

struct PowerSums {
  double mass = 0.0, deriv = 0.0;  // sum g^beta and sum g^(beta - 1), g = (x - tau)_+
  double low = 0.0, high = 0.0;    // min g > 0 and max g <= 0 (the keys nearest tau)
  double curv = 0.0;               // max g^(beta - 3) over the support
  double bend = 0.0, bend3 = 0.0;  // sums of g^(beta - 2) and g^(beta - 3)
};

// PowerSums of one row at one tau, a vector of keys at a time: power() stores the powers
// e = g^(beta - 1) (0 off the support) and the gaps g, add() sums them in two accumulators by
// key position (see for_vector_pairs).
template <typename T>
struct PowerAcc;

// Float64 rows: powers in double.
template <>
struct PowerAcc<double> {
  using V = vdouble;
  static constexpr int W = 4;
  double m, scale, tau, beta_m1;
  V ms[2], dv[2], lo[2], hi[2], cv[2], bd[2], b3[2];

  PowerAcc(double m_, double scale_, double tau_, double beta_m1_)
      : m(m_), scale(scale_), tau(tau_), beta_m1(beta_m1_) {
    const V zero = {}, big = zero + 1e300;
    for (int j = 0; j < 2; ++j) {
      ms[j] = dv[j] = cv[j] = bd[j] = b3[j] = zero;
      lo[j] = big;
      hi[j] = -big;
    }
  }

  // Loop 1: e = g^(beta - 1) and g at keys [i, i + W) into e and gs.
  ATTNKIT_ALWAYS_INLINE void power(const double* z, int64_t i, double* e, double* gs) const {
    const V zero = {}, one = zero + 1.0;
    const V g = scale * (load(z + i) - m) - tau;
    const auto in = g > kTiny;
    const V ei = in ? exp_d<true>(beta_m1 * log_d<true>(in ? g : one)) : zero;
    std::memcpy(e + i, &ei, sizeof ei);
    std::memcpy(gs + i, &g, sizeof g);
  }

  // Loop 2: the sums over keys [i, i + W), in accumulator j.
  ATTNKIT_ALWAYS_INLINE void add(int64_t i, int j, const double* e, const double* gs) {
    const V zero = {}, one = zero + 1.0, big = zero + 1e300;
    const V g = load(gs + i), ei = load(e + i);
    const auto in = g > kTiny;
    const V safe = in ? g : one;
    ms[j] += ei * (in ? g : zero);  // not 0 * -inf at the padding
    dv[j] += ei;
    lo[j] = attnkit_lanes::vmin(lo[j], in ? g : big);
    hi[j] = attnkit_lanes::vmax(hi[j], in ? -big : g);
    const V ei_g = ei / safe, ei_g2 = ei_g / safe;
    bd[j] += ei_g;
    b3[j] += ei_g2;
    cv[j] = attnkit_lanes::vmax(cv[j], ei_g2);
  }

  PowerSums sums() const {
    return {lanes_sum<double>(ms[0] + ms[1]), lanes_sum<double>(dv[0] + dv[1]),
            attnkit_lanes::lanes_min<double>(attnkit_lanes::vmin(lo[0], lo[1])),
            attnkit_lanes::lanes_max<double>(attnkit_lanes::vmax(hi[0], hi[1])),
            attnkit_lanes::lanes_max<double>(attnkit_lanes::vmax(cv[0], cv[1])),
            lanes_sum<double>(bd[0] + bd[1]), lanes_sum<double>(b3[0] + b3[1])};
  }
};

// Float32 rows: powers in float of the gap carried to double precision (see entmax_rows.h).
template <>
struct PowerAcc<float> {
  using V = vfloat;
  static constexpr int W = 8;
  float m, sc, t_hi, t_lo, bm;
  V ms[2], dv[2], lo[2], hi[2], cv[2], bd[2], b3[2];

  PowerAcc(float m_, double scale, double tau, double beta_m1)
      : m(m_),
        sc(static_cast<float>(scale)),  // exact: alpha is a float in [1, 2]
        t_hi(static_cast<float>(tau)),
        t_lo(static_cast<float>(tau - static_cast<float>(tau))),
        bm(static_cast<float>(beta_m1)) {
    const V zero = {}, big = zero + 1e30f;
    for (int j = 0; j < 2; ++j) {
      ms[j] = dv[j] = cv[j] = bd[j] = b3[j] = zero;
      lo[j] = big;
      hi[j] = -big;
    }
  }

  // Loop 1: e = g^(beta - 1) and g at keys [i, i + W) into e and gs.
  ATTNKIT_ALWAYS_INLINE void power(const float* z, int64_t i, float* e, float* gs) const {
    const V zero = {}, one = zero + 1.0f;
    const V v = load(z + i) - m;
    const V x = sc * v;
    const V x_err = sc * v - x;  // exact where the product contracts to an FMA
    const V g = x - t_hi;        // g + (x_err + sum_err - t_lo) is x - tau
    const V back = g - x;
    const V sum_err = (x - (g - back)) - (t_hi + back);  // TwoSum
    const auto in = g > 1e-30f;
    const V safe = in ? g : one;
    const V lg = log_f(safe) + ((x_err + sum_err) - t_lo) / safe;
    const V ei = in ? exp_f(bm * lg) : zero;
    std::memcpy(e + i, &ei, sizeof ei);
    std::memcpy(gs + i, &g, sizeof g);
  }

  // Loop 2: the sums over keys [i, i + W), in accumulator j.
  ATTNKIT_ALWAYS_INLINE void add(int64_t i, int j, const float* e, const float* gs) {
    const V zero = {}, one = zero + 1.0f, big = zero + 1e30f;
    const V g = load(gs + i), ei = load(e + i);
    const auto in = g > 1e-30f;
    const V inv = 1.0f / (in ? g : one);
    ms[j] += ei * (in ? g : zero);
    dv[j] += ei;
    lo[j] = attnkit_lanes::vmin(lo[j], in ? g : big);
    hi[j] = attnkit_lanes::vmax(hi[j], in ? -big : g);
    const V ei_g = ei * inv, ei_g2 = ei_g * inv;
    bd[j] += ei_g;
    b3[j] += ei_g2;
    cv[j] = attnkit_lanes::vmax(cv[j], ei_g2);
  }

  PowerSums sums() const {
    return {lanes_sum<float>(ms[0] + ms[1]), lanes_sum<float>(dv[0] + dv[1]),
            attnkit_lanes::lanes_min<float>(attnkit_lanes::vmin(lo[0], lo[1])),
            attnkit_lanes::lanes_max<float>(attnkit_lanes::vmax(hi[0], hi[1])),
            attnkit_lanes::lanes_max<float>(attnkit_lanes::vmax(cv[0], cv[1])),
            lanes_sum<float>(bd[0] + bd[1]), lanes_sum<float>(b3[0] + b3[1])};
  }
};

// PowerSums of the padded row z[0:kp] (shifted by m) at tau; e[0:kp] gets the powers e,
// e[kp:2 kp] the gaps g. The powers come first, in a loop of their own (the sums' seven
// accumulators beside them would not fit in the registers).
template <typename T>
PowerSums power_pass(const T* z, int64_t kp, T m, double scale, double tau, double beta_m1,
                     T* e) {
  constexpr int W = PowerAcc<T>::W;
  PowerAcc<T> acc(m, scale, tau, beta_m1);
  for (int64_t i = 0; i < kp; i += W) acc.power(z, i, e, e + kp);
  attnkit_lanes::for_vector_pairs<W>(
      kp, [&](int64_t i, int j) ATTNKIT_ALWAYS_INLINE { acc.add(i, j, e, e + kp); });
  return acc.sums();
}

// The passes of two rows of kp keys, their powers in one loop (two independent chains); each
// row's sums are those of power_pass (the same operations in the same order).
template <typename T>
void power_pass_pair(const T* za, const T* zb, int64_t kp, PowerAcc<T>& a, PowerAcc<T>& b,
                     T* ea, T* eb) {
  constexpr int W = PowerAcc<T>::W;
  for (int64_t i = 0; i < kp; i += W) {
    a.power(za, i, ea, ea + kp);
    b.power(zb, i, eb, eb + kp);
  }
  attnkit_lanes::for_vector_pairs<W>(kp, [&](int64_t i, int j) ATTNKIT_ALWAYS_INLINE {
    a.add(i, j, ea, ea + kp);
    b.add(i, j, eb, eb + kp);
  });
}

// Rough passes (float32 rows), which bring tau near the root before the exact passes above
// decide the weights: sums of powers computed to ~2e-5 relative by log2_rough / exp2_rough,
// nothing stored, and no near-key or third-order terms (a rough pass never ends a solve).
struct RoughSums {
  double mass = 0.0, deriv = 0.0;  // sums of g^beta and g^(beta - 1)
  double bend = 0.0, bend3 = 0.0;  // sums of g^(beta - 2) and g^(beta - 3)
};

struct RoughAcc {
  using V = vfloat;
  static constexpr int W = 8;
  float m, sc, tau, bm3;
  V ms[2], dv[2], bd[2], b3[2];

  RoughAcc(float m_, double scale, double tau_, double beta)
      : m(m_),
        sc(static_cast<float>(scale)),
        tau(static_cast<float>(tau_)),
        bm3(static_cast<float>(beta - 3.0)) {
    for (int j = 0; j < 2; ++j) ms[j] = dv[j] = bd[j] = b3[j] = V{};
  }

  // The sums over keys [i, i + W) of z, in accumulator j: the power g^(beta - 3) of the gap
  // (at least 1e-10 there, so at most 1e20 as beta >= 1), the others by products with g.
  ATTNKIT_ALWAYS_INLINE void add(const float* z, int64_t i, int j) {
    const V zero = {}, one = zero + 1.0f, floor = zero + 1e-10f;
    const V g = sc * (load(z + i) - m) - tau;
    const auto in = g > 1e-30f;
    const V safe = in ? g : one;
    const V base = safe > floor ? safe : floor;
    const V p3 = in ? attnkit_fastmath::exp2_rough(bm3 * attnkit_fastmath::log2_rough(base)) : zero;
    const V p2 = p3 * safe, e = p2 * safe;
    b3[j] += p3;
    bd[j] += p2;
    dv[j] += e;
    ms[j] += e * safe;
  }

  RoughSums sums() const {
    return {lanes_sum<float>(ms[0] + ms[1]), lanes_sum<float>(dv[0] + dv[1]),
            lanes_sum<float>(bd[0] + bd[1]), lanes_sum<float>(b3[0] + b3[1])};
  }
};

// RoughSums of the padded row z[0:kp] (shifted by m) at tau.
inline RoughSums rough_pass(const float* z, int64_t kp, float m, double scale, double tau) {
  RoughAcc acc(m, scale, tau, 1.0 / scale);
  attnkit_lanes::for_vector_pairs<RoughAcc::W>(
      kp, [&](int64_t i, int j) ATTNKIT_ALWAYS_INLINE { acc.add(z, i, j); });
  return acc.sums();
}

// The rough passes of two rows of kp keys in one loop (each as rough_pass).
inline void rough_pass_pair(const float* za, const float* zb, int64_t kp, RoughAcc& a,
                            RoughAcc& b) {
  attnkit_lanes::for_vector_pairs<RoughAcc::W>(kp, [&](int64_t i, int j) ATTNKIT_ALWAYS_INLINE {
    a.add(za, i, j);
    b.add(zb, i, j);
  });
}

}  // namespace
