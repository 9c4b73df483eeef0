// Closed-form backward passes of the fused normalizers (part of sparse_rows.cpp).
//
// With s_i the diagonal of the Jacobian on the support (sparsemax: 1, entmax-1.5: sqrt(p_i),
// alpha-entmax: p_i^(2 - alpha)), the gradient of the scores is s * (g - <g, s> / sum(s)):
// one pass for the row sums, one for the result. Alpha-entmax adds, per row, the gradient with
// respect to alpha (Correia et al. 2019), written as attnkit's PyTorch path and the entmax
// package write it:
//   (<g, p> - q) / (alpha - 1)^2 - (<g, p log p> - q sum(p log p)) / (alpha - 1),
// with q = <g, s> / sum(s).

#pragma once

namespace {

void check_pair(const at::Tensor& out, const at::Tensor& grad, const char* name) {
  check_rows(out, name);
  check_rows(grad, name);
  TORCH_CHECK(out.sizes() == grad.sizes() && out.scalar_type() == grad.scalar_type(), name,
              ": the weights and their gradient must have the same shape and dtype");
}

template <typename T>
void sparsemax_backward_row(const T* p, const T* g, T* gi, int64_t k) {
  double s = 0.0;
  int64_t c = 0;
#pragma omp simd reduction(+ : s, c)
  for (int64_t i = 0; i < k; ++i) {
    const bool in = p[i] > 0;
    s += in ? static_cast<double>(g[i]) : 0.0;
    c += in;
  }
  const double mean = c > 0 ? s / static_cast<double>(c) : 0.0;
#pragma omp simd
  for (int64_t i = 0; i < k; ++i) {
    const double d = static_cast<double>(g[i]) - mean;
    gi[i] = p[i] > 0 ? static_cast<T>(d) : T(0);
  }
}

template <typename T>
void entmax15_backward_row(const T* p, const T* g, T* gi, int64_t k) {
  double sg = 0.0, ss = 0.0;
#pragma omp simd reduction(+ : sg, ss)
  for (int64_t i = 0; i < k; ++i) {
    const double s = std::sqrt(static_cast<double>(p[i]));
    sg += s * static_cast<double>(g[i]);
    ss += s;
  }
  const double q = ss > 0.0 ? sg / ss : 0.0;
#pragma omp simd
  for (int64_t i = 0; i < k; ++i) {
    const double s = std::sqrt(static_cast<double>(p[i]));
    gi[i] = static_cast<T>(s * (static_cast<double>(g[i]) - q));
  }
}

// Returns the gradient of alpha (0 unless want_alpha).
template <typename T>
double entmax_backward_row(const T* p, const T* sl, const T* g, T* gi, int64_t k, double alpha,
                           bool want_alpha) {
  constexpr bool kPrecise = std::is_same<T, double>::value;
  double sg = 0.0, ss = 0.0;
#pragma omp simd reduction(+ : sg, ss)
  for (int64_t i = 0; i < k; ++i) {
    sg += static_cast<double>(sl[i]) * static_cast<double>(g[i]);
    ss += static_cast<double>(sl[i]);
  }
  const double skewed = sg / std::max(ss, static_cast<double>(std::numeric_limits<T>::min()));
  double grad_alpha = 0.0;
  if (want_alpha) {
    double gp = 0.0, gh = 0.0, h = 0.0;
#pragma omp simd reduction(+ : gp, gh, h)
    for (int64_t i = 0; i < k; ++i) {
      const double pi = static_cast<double>(p[i]), gv = static_cast<double>(g[i]);
      const bool in = pi > kTiny;
      const double log_p = attnkit_fastmath::log_d<kPrecise>(in ? pi : 1.0);
      const double plogp = in ? pi * log_p : 0.0;
      gp += gv * pi;
      gh += gv * plogp;
      h += plogp;
    }
    const double scale = alpha - 1.0;
    grad_alpha = (gp - skewed) / (scale * scale) - (gh - skewed * h) / scale;
  }
#pragma omp simd
  for (int64_t i = 0; i < k; ++i) {
    const double s = static_cast<double>(sl[i]);
    gi[i] = static_cast<T>(s * (static_cast<double>(g[i]) - skewed));
  }
  return grad_alpha;
}

template <typename T, typename RowFn>
void for_each_grad_row(const T* p, const T* g, T* gi, int64_t rows, int64_t k, RowFn row_fn) {
  at::parallel_for(0, rows, grain_rows(k), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row_fn(p + r * k, g + r * k, gi + r * k, k);
  });
}

at::Tensor sparsemax_backward(const at::Tensor& out, const at::Tensor& grad) {
  check_pair(out, grad, "sparsemax_backward");
  at::Tensor grad_in = at::empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "sparsemax_backward", [&] {
    for_each_grad_row(out.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                      grad_in.data_ptr<scalar_t>(), out.size(0), out.size(1),
                      sparsemax_backward_row<scalar_t>);
  });
  return grad_in;
}

at::Tensor entmax15_backward(const at::Tensor& out, const at::Tensor& grad) {
  check_pair(out, grad, "entmax15_backward");
  at::Tensor grad_in = at::empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "entmax15_backward", [&] {
    for_each_grad_row(out.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                      grad_in.data_ptr<scalar_t>(), out.size(0), out.size(1),
                      entmax15_backward_row<scalar_t>);
  });
  return grad_in;
}

template <typename T>
void entmax_backward_rows(const T* p, const T* sl, const T* g, const double* alpha, T* gi,
                          double* grad_alpha, int64_t rows, int64_t k) {
  at::parallel_for(0, rows, grain_rows(k), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const double ga = entmax_backward_row(p + r * k, sl + r * k, g + r * k, gi + r * k, k,
                                            alpha[r], grad_alpha != nullptr);
      if (grad_alpha != nullptr) grad_alpha[r] = ga;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> entmax_backward(const at::Tensor& out, const at::Tensor& slope,
                                                   const at::Tensor& grad,
                                                   const at::Tensor& alpha, bool want_alpha) {
  check_pair(out, grad, "entmax_backward");
  check_pair(slope, grad, "entmax_backward");
  check_alpha(alpha, out.size(0), "entmax_backward");
  at::Tensor grad_in = at::empty_like(grad);
  at::Tensor grad_alpha = at::empty({want_alpha ? out.size(0) : 0}, alpha.options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "entmax_backward", [&] {
    entmax_backward_rows(out.const_data_ptr<scalar_t>(), slope.const_data_ptr<scalar_t>(),
                         grad.const_data_ptr<scalar_t>(), alpha.const_data_ptr<double>(),
                         grad_in.data_ptr<scalar_t>(),
                         want_alpha ? grad_alpha.data_ptr<double>() : nullptr, out.size(0),
                         out.size(1));
  });
  return {grad_in, grad_alpha};
}

}  // namespace
