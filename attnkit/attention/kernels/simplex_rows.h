// Sparsemax and entmax-1.5 forward of one row (part of sparse_rows.cpp; see its top comment).

#pragma once

namespace {

using attnkit_lanes::inf;
using attnkit_lanes::kMaxLanes;
using attnkit_lanes::round_down;
using attnkit_lanes::row_stats;
using attnkit_lanes::Stats;

// A start for the solvers from a lower bound computed with a rounded mean: lowered by more
// than the mean's rounding error (so it stays below the threshold), and never below -1.
template <typename T>
T start_below(double bound, double mean) {
  return std::max(T(-1), round_down<T>(bound - 1e-5 * (1.0 + std::abs(mean))));
}

// Copies z[0:k] into buf (padded with -inf) and returns its maximum, with the maxima of its
// lanes in lane_max; a row of only -inf gets zero weights in out (and returns -inf).
template <typename T>
T open_row(const T* z, int64_t k, T* out, T* buf, T* lane_max) {
  attnkit_lanes::load_row(z, k, buf);
  const T m = attnkit_lanes::lane_maxima(buf, attnkit_lanes::padded(k), lane_max);
  if (m == -inf<T>()) std::fill(out, out + k, T(0));
  return m;
}

// ---------------------------------------------------------------- sparsemax

// Sparsemax threshold of v = z - m from a lower bound tau.
template <typename T>
T sparsemax_threshold(const T* z, int64_t k, T m, T tau) {
  for (int step = 0; step < kMaxSteps; ++step) {
    const Stats<T> st = row_stats<T, false>(z, k, m, T(1), tau);
    const double count = static_cast<double>(st.count);
    const T next = round_down<T>(static_cast<double>(tau) + (st.sum - 1.0) / count);
    if ((st.low > next && next >= st.high) || !(next > tau)) return next;
    tau = next;
  }
  return tau;
}

template <typename T>
void sparsemax_row(const T* z, int64_t k, T* out, T* buf) {
  const int64_t kp = attnkit_lanes::padded(k);
  T lane_max[kMaxLanes];
  const T m = open_row(z, k, out, buf, lane_max);
  if (m == -inf<T>()) return;
  // (Short rows gain nothing from the mean bound that entmax-1.5 uses: measured.)
  T tau = sparsemax_threshold(lane_max, kMaxLanes, m, T(-1));
  tau = sparsemax_threshold(buf, kp, m, tau);  // one pass when the lanes held the whole row
  for (int64_t i = 0; i < k; ++i) out[i] = std::max((z[i] - m) - tau, T(0));
}

// ---------------------------------------------------------------- entmax-1.5

// Entmax-1.5 threshold of y = (z - m) / 2 from a lower bound tau.
template <typename T>
T entmax15_threshold(const T* z, int64_t k, T m, T tau) {
  for (int step = 0; step < kMaxSteps; ++step) {
    const Stats<T> st = row_stats<T, true>(z, k, m, T(0.5), tau);
    const double count = static_cast<double>(st.count);
    const double lin = st.sum, sq = st.sum_sq;  // sums of (y - tau) and (y - tau)^2 on S
    const double disc = std::max(lin * lin - count * (sq - 1.0), 0.0);
    const T root = static_cast<T>(static_cast<double>(tau) + (lin - std::sqrt(disc)) / count);
    if (st.low > root && root >= st.high) return root;
    const double norm = std::sqrt(sq);
    const T next = round_down<T>(static_cast<double>(tau) +
                                 norm * (norm - 1.0) / std::max(lin, kTiny));
    if (!(next > tau)) return root;
    tau = next;
  }
  return tau;
}

template <typename T>
void entmax15_row(const T* z, int64_t k, T* out, T* buf) {
  const int64_t kp = attnkit_lanes::padded(k);
  T lane_max[kMaxLanes];
  const T m = open_row(z, k, out, buf, lane_max);
  if (m == -inf<T>()) return;
  T tau;
  if (const int64_t ks = attnkit_lanes::short_row_keys(buf, kp)) {
    // (mean (y - tau)_+)^2 <= mean (y - tau)_+^2 = 1 / n: tau >= mean(y) - 1 / sqrt(n).
    T n;
    const double mean = 0.5 * (static_cast<double>(attnkit_lanes::finite_mean(buf, ks, n)) - m);
    tau = start_below<T>(mean - 1.0 / std::sqrt(static_cast<double>(n)), mean);
    tau = entmax15_threshold(buf, ks, m, tau);
  } else {
    tau = entmax15_threshold(lane_max, kMaxLanes, m, T(-1));
    tau = entmax15_threshold(buf, kp, m, tau);  // one pass when the lanes held the whole row
  }
  for (int64_t i = 0; i < k; ++i) {
    const T r = std::max(T(0.5) * (z[i] - m) - tau, T(0));
    out[i] = r * r;
  }
}

}  // namespace
