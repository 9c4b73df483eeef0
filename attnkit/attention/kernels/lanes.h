// Row passes with a fixed lane layout, shared by the fused normalizers (see sparse_rows.cpp).
//
// A row is first copied into a per-thread buffer padded with -inf to a multiple of 32 keys
// (`load_row`); every pass then runs over whole blocks in 256-bit vectors (GCC / Clang vector
// extensions: AVX on x86, split into halves on narrower machines), key i accumulating into
// lane i % L, and the lanes are combined in a fixed order. The result of a pass thus depends
// only on the keys in their positions, and keys at -inf at the end of a row (key padding)
// leave every bit of the row's result as it is without them.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// Loop bodies passed as lambdas must be inlined (GCC may otherwise call a large body, with
// the accumulators in memory: 1.3x slower passes).
#ifndef ATTNKIT_ALWAYS_INLINE
#define ATTNKIT_ALWAYS_INLINE __attribute__((always_inline))
#endif

namespace attnkit_lanes {

constexpr int kMaxLanes = 32;  // lanes of the max pass: their maxima start the solvers
constexpr int64_t kPad = 8;    // rows are padded to a multiple of this

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int size = static_cast<int>(32 / sizeof(T));
};

template <typename T>
constexpr T inf() {
  return std::numeric_limits<T>::infinity();
}

template <typename T>
inline typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
inline typename Vec<T>::type splat(T x) {
  typename Vec<T>::type v;
  for (int l = 0; l < Vec<T>::size; ++l) v[l] = x;
  return v;
}

template <typename V>
inline V vmin(V a, V b) {
  return a < b ? a : b;
}

template <typename V>
inline V vmax(V a, V b) {
  return a > b ? a : b;
}

// Lanes of a vector, summed (or min / max-ed) in a fixed order.
template <typename T, typename V>
inline T lanes_sum(V v) {
  T s = v[0];
  for (int l = 1; l < Vec<T>::size; ++l) s += v[l];
  return s;
}

template <typename T, typename V>
inline T lanes_min(V v) {
  T s = v[0];
  for (int l = 1; l < Vec<T>::size; ++l) s = std::min(s, static_cast<T>(v[l]));
  return s;
}

template <typename T, typename V>
inline T lanes_max(V v) {
  T s = v[0];
  for (int l = 1; l < Vec<T>::size; ++l) s = std::max(s, static_cast<T>(v[l]));
  return s;
}

inline int64_t padded(int64_t k) { return (k + kPad - 1) / kPad * kPad; }

// Calls body(i, j) for the W-key vectors of a row padded to kp keys, as a loop with two
// accumulators: vector i goes to accumulator j = (i / W) % 2, so a key's accumulator and its
// place in that accumulator's sum depend only on its position (trailing keys change no bit).
template <int W, typename Body>
inline void for_vector_pairs(int64_t kp, Body body) {
  int64_t i = 0;
  for (; i + 2 * W <= kp; i += 2 * W) {
    body(i, 0);
    body(i + W, 1);
  }
  if (i < kp) body(i, 0);  // an odd number of vectors
}

// Copy z[0:k] into buf[0:padded(k)], padding with -inf.
template <typename T>
inline void load_row(const T* z, int64_t k, T* buf) {
  constexpr int W = Vec<T>::size;
  int64_t i = 0;
  for (; i + W <= k; i += W) std::memcpy(buf + i, z + i, sizeof(typename Vec<T>::type));
  for (; i < k; ++i) buf[i] = z[i];  // a short row's copy without a library call
  std::fill(buf + k, buf + padded(k), -inf<T>());
}

// A short row: at most kShortRow keys, or more with -inf beyond the first kShortRow (masked
// padding). Its solvers skip the lane maxima (a pass over them costs as much as one over the
// row) and start from a bound by the mean of its finite keys.
constexpr int64_t kShortRow = 64;

// The keys of a padded row that hold all its finite ones when it is short, else 0. Keys past
// them are -inf, so a row and the same row with -inf keys appended agree on this and on all
// that follows (a long row finds a finite key at once).
template <typename T>
inline int64_t short_row_keys(const T* buf, int64_t kp) {
  if (kp <= kShortRow) return kp;
  for (int64_t i = kShortRow; i < kp; ++i) {
    if (buf[i] != -inf<T>()) return 0;
  }
  return kShortRow;
}

// The number and the mean of the finite keys of buf[0:kp] (kp a multiple of the vector width).
template <typename T>
inline T finite_mean(const T* buf, int64_t kp, T& count) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::size;
  const V ninf = splat(-inf<T>()), zero = splat(T(0)), one = splat(T(1));
  V sum = zero, n = zero;
  for (int64_t i = 0; i < kp; i += W) {
    const V x = load(buf + i);
    const auto finite = x > ninf;
    sum += finite ? x : zero;
    n += finite ? one : zero;
  }
  count = lanes_sum<T>(n);
  return lanes_sum<T>(sum) / count;
}

// Row maximum of a padded row; lane_max[l] = max of keys l, l + 32, ... (-inf when none).
template <typename T>
inline T lane_maxima(const T* buf, int64_t kp, T* lane_max) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::size, N = kMaxLanes / W;
  V acc[N];
  for (int j = 0; j < N; ++j) acc[j] = splat(-inf<T>());
  int64_t i = 0;
  for (; i + kMaxLanes <= kp; i += kMaxLanes) {
    for (int j = 0; j < N; ++j) acc[j] = vmax(acc[j], load(buf + i + j * W));
  }
  for (int j = 0; i + j * W < kp; ++j) acc[j] = vmax(acc[j], load(buf + i + j * W));
  V top = acc[0];
  for (int j = 0; j < N; ++j) {
    std::memcpy(lane_max + j * W, &acc[j], sizeof(V));
    top = vmax(top, acc[j]);
  }
  return lanes_max<T>(top);
}

// On y = mult * (z - m) and a threshold t: on {y > t} the count, sum (y - t),
// sum (y - t)^2 (with Squares) and min y; on the other keys max y.
template <typename T>
struct Stats {
  T count, sum, sum_sq, low, high;
};

template <typename T, bool Squares>
inline Stats<T> row_stats(const T* buf, int64_t kp, T m, T mult, T t) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::size;
  const V zero = splat(T(0)), one = splat(T(1)), pinf = splat(inf<T>()), ninf = -pinf;
  V c[2] = {zero, zero}, s1[2] = {zero, zero}, s2[2] = {zero, zero};
  V lo[2] = {pinf, pinf}, hi[2] = {ninf, ninf};
  for_vector_pairs<W>(kp, [&](int64_t i, int j) ATTNKIT_ALWAYS_INLINE {
    const V y = mult * (load(buf + i) - m);
    const auto in = y > t;
    const V d = in ? y - t : zero;
    c[j] += in ? one : zero;
    s1[j] += d;
    if (Squares) s2[j] += d * d;
    lo[j] = vmin(lo[j], in ? y : pinf);
    hi[j] = vmax(hi[j], in ? ninf : y);
  });
  Stats<T> out;
  out.count = lanes_sum<T>(c[0] + c[1]);
  out.sum = lanes_sum<T>(s1[0] + s1[1]);
  out.sum_sq = Squares ? lanes_sum<T>(s2[0] + s2[1]) : T(0);
  out.low = lanes_min<T>(vmin(lo[0], lo[1]));
  out.high = lanes_max<T>(vmax(hi[0], hi[1]));
  return out;
}

// The largest T not above a double (thresholds stay lower bounds when rounded to float).
template <typename T>
inline T round_down(double v) {
  const T r = static_cast<T>(v);
  if (!(static_cast<double>(r) > v)) return r;
  return r - std::max(std::abs(r) * std::numeric_limits<T>::epsilon(),  // 1 or 2 ulp lower
                      std::numeric_limits<T>::denorm_min());
}

}  // namespace attnkit_lanes
