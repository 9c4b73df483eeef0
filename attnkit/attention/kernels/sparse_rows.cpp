// Fused per-row sparsemax, entmax-1.5 and alpha-entmax (forward and backward) on CPU.
//
// Each row of a contiguous [N, K] float32 / float64 tensor is solved on its own, rows spread
// over torch's intra-op threads with at::parallel_for. A row is read from memory once; the
// solver then makes a few vectorised passes over it while it sits in L1, and one pass writes
// the weights (the PyTorch path makes many passes over the whole tensor instead).
//
// Shifted by its maximum, a row's threshold lies in [-1, 0). The max pass also keeps the
// maxima of 32 interleaved lanes of keys; the threshold of those 32 values is a lower bound of
// the row's (fewer keys, lower threshold) and usually close to it. From a lower bound tau:
//   * sparsemax: one pass gives S = {v > tau}, its threshold t = (sum_S v - 1) / |S| and the
//     keys nearest the boundary; t is exact when min_S v > t >= max of the rest, and
//     otherwise a better lower bound (Michelot's support iteration);
//   * entmax-1.5 (y = v / 2): the same pass gives the smaller root t of
//     |S| t^2 - 2 t sum_S y + sum_S y^2 - 1 = 0, exact under the same test; otherwise a Newton
//     step on ||(y - tau)_+||_2 - 1 (convex, decreasing: it stays a lower bound);
//   * alpha-entmax: see entmax_rows.h.
// Keys at -inf are never in the support, and reductions are laid out by key position (see
// lanes.h), so keys masked at the end of a row change no bit of its result.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastmath.h"
#include "lanes.h"

namespace {

constexpr int kMaxSteps = 100;
constexpr double kTiny = 1e-300;  // gaps below this count as off the support
// Alpha-entmax's rough passes (see entmax_rows.h): at most kMaxRough per row; their mass moves
// the bracket only when it is off 1 by more than kRoughMargin (the powers' error is ~2e-5,
// 4e-5 at alpha 1.01) plus the error of tau rounded to float (entmax_steps.h), and they stop
// once the error left after the step is predicted below kRoughSwitch / beta.
constexpr int kMaxRough = 4;
constexpr double kRoughMargin = 1e-3;
constexpr double kRoughSwitch = 1e-3;
constexpr int kRoughSupport = 6;

// Rows per task: enough work per task that threads do not fight over small chunks.
int64_t grain_rows(int64_t num_keys) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(num_keys, 1));
}

}  // namespace

#include "simplex_rows.h"
#include "entmax_power.h"
#include "entmax_steps.h"
#include "entmax_rows.h"

namespace {

// ---------------------------------------------------------------- ops

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), name, " must be a contiguous [N, K] tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64");
}

void check_alpha(const at::Tensor& alpha, int64_t rows, const char* name) {
  TORCH_CHECK(alpha.device().is_cpu() && alpha.scalar_type() == at::kDouble &&
                  alpha.is_contiguous() && alpha.numel() == rows,
              name, ": alpha must be a contiguous float64 CPU tensor with one value per row");
}

template <typename T, typename RowFn>
void for_each_row(const T* z, T* out, int64_t rows, int64_t k, RowFn row_fn) {
  at::parallel_for(0, rows, grain_rows(k), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(static_cast<size_t>(attnkit_lanes::padded(k)));  // the row, padded
    for (int64_t r = begin; r < end; ++r) row_fn(z + r * k, k, out + r * k, buf.data());
  });
}

at::Tensor sparsemax_forward(const at::Tensor& scores) {
  check_rows(scores, "sparsemax_forward");
  at::Tensor out = at::empty_like(scores);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "sparsemax_forward", [&] {
    for_each_row(scores.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), scores.size(0),
                 scores.size(1), sparsemax_row<scalar_t>);
  });
  return out;
}

at::Tensor entmax15_forward(const at::Tensor& scores) {
  check_rows(scores, "entmax15_forward");
  at::Tensor out = at::empty_like(scores);
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "entmax15_forward", [&] {
    for_each_row(scores.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), scores.size(0),
                 scores.size(1), entmax15_row<scalar_t>);
  });
  return out;
}

template <typename T>
void entmax_rows(const T* z, const double* alpha, T* out, T* slope, int64_t rows, int64_t k) {
  at::parallel_for(0, rows, grain_rows(k), [&](int64_t begin, int64_t end) {
    const int64_t kp = attnkit_lanes::padded(k);
    std::vector<T> scratch(static_cast<size_t>(6 * kp));  // 2 rows: keys, powers, gaps
    CountPowers powers;
    const auto row = [&](int64_t r, int64_t s) {
      return RowSolve<T>{z + r * k,
                         k,
                         alpha[r],
                         out + r * k,
                         slope == nullptr ? nullptr : slope + r * k,
                         scratch.data() + 3 * s * kp,
                         scratch.data() + (3 * s + 1) * kp,
                         &powers};
    };
    int64_t r = begin;  // two rows at a time (see entmax_power.h), then the odd one
    for (; r + 1 < end; r += 2) entmax_row_pair(row(r, 0), row(r + 1, 1));
    if (r < end) entmax_row(row(r, 0));
  });
}

std::tuple<at::Tensor, at::Tensor> entmax_forward(const at::Tensor& scores,
                                                  const at::Tensor& alpha, bool want_slope) {
  check_rows(scores, "entmax_forward");
  check_alpha(alpha, scores.size(0), "entmax_forward");
  at::Tensor out = at::empty_like(scores);
  at::Tensor slope = want_slope ? at::empty_like(scores) : at::empty({0}, scores.options());
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "entmax_forward", [&] {
    entmax_rows(scores.const_data_ptr<scalar_t>(), alpha.const_data_ptr<double>(),
                out.data_ptr<scalar_t>(), want_slope ? slope.data_ptr<scalar_t>() : nullptr,
                scores.size(0), scores.size(1));
  });
  return {out, slope};
}

}  // namespace

#include "sparse_rows_backward.h"

TORCH_LIBRARY(attnkit_sparse_rows, m) {
  m.def("sparsemax_forward(Tensor scores) -> Tensor", &sparsemax_forward);
  m.def("sparsemax_backward(Tensor out, Tensor grad) -> Tensor", &sparsemax_backward);
  m.def("entmax15_forward(Tensor scores) -> Tensor", &entmax15_forward);
  m.def("entmax15_backward(Tensor out, Tensor grad) -> Tensor", &entmax15_backward);
  m.def("entmax_forward(Tensor scores, Tensor alpha, bool want_slope) -> (Tensor, Tensor)",
        &entmax_forward);
  m.def(
      "entmax_backward(Tensor out, Tensor slope, Tensor grad, Tensor alpha, bool want_alpha)"
      " -> (Tensor, Tensor)",
      &entmax_backward);
}
