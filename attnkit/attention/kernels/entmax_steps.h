// Alpha-entmax's steps between passes (part of sparse_rows.cpp, see entmax_rows.h): a row's
// solve state, the Newton step on the beta-norm after each pass, the second-order finish that
// ends a solve, and the choice of the next pass, rough or exact.

#pragma once

namespace {

using attnkit_fastmath::pow_d;
using attnkit_fastmath::pow_float;

// The Newton step on ||.||_beta - 1 at tau (tau + step), or a bisection of the updated
// bracket when the step leaves it.
inline double newton_next(double tau, const PowerSums& ps, double scale, double& lo,
                          double& hi) {
  if (ps.mass >= 1.0) {
    lo = std::max(lo, tau);
  } else {
    if (tau <= lo) lo = -1.0;  // a start above the root (rounding): back to the sure bound
    hi = std::min(hi, tau);
  }
  if (!(ps.mass > 0.0)) return 0.5 * (lo + hi);
  const double next =
      tau + (ps.mass - pow_float<false>(ps.mass, 1.0 - scale)) / std::max(ps.deriv, kTiny);
  return next >= lo && next <= hi ? next : 0.5 * (lo + hi);
}

// Passes from tau until the threshold is tau + d for a small step d, where the weights follow
// from e to second order (see weights_at). Each pass takes a Newton step on the beta-norm
// (convex: from the left it never overshoots; nearly linear for large beta, where a Taylor
// model of sum g^beta is poor). Once no key would enter or leave the support, the pass also
// solves the second-order model sum e (g - beta d + beta (beta - 1) d^2 / 2g) = 1, and that
// step d is the last when the third-order terms it leaves out, in the threshold and in a
// weight, are below tol (or beta |d| is at the rounding level, floor). newton_step decides
// one pass (ps at tau): the step, and whether it is the last.
inline bool newton_step(double tau, const PowerSums& ps, double scale, double tol, double floor,
                        double& lo, double& hi, double& step) {
  const double beta_m1 = 1.0 / scale - 1.0, beta = beta_m1 + 1.0;
  step = newton_next(tau, ps, scale, lo, hi) - tau;
  if (beta * std::abs(step) <= floor) return true;
  if (step > ps.high && 2.0 * std::abs(step) < ps.low) {
    const double third = std::abs(beta * beta_m1 * (beta - 2.0)) / 6.0;
    const double slope = beta * ps.deriv, bend = beta * beta_m1 * ps.bend;
    const double disc = slope * slope - 2.0 * bend * (ps.mass - 1.0);
    double quad = step;
    if (bend > 0.0 && disc >= 0.0) quad = (ps.mass - 1.0) * 2.0 / (slope + std::sqrt(disc));
    const double size = std::abs(quad), cube = size * size * size;
    const double tau_error = third * ps.bend3 * cube / std::max(slope, kTiny);
    const double weight_error = third * ps.curv * cube / std::max(ps.mass, kTiny);
    if (quad > ps.high && 2.0 * size < ps.low &&
        std::max(beta * tau_error * ps.bend / std::max(ps.deriv, kTiny), weight_error) <= tol) {
      step = quad;
      return true;
    }
  }
  return false;
}

// The passes from tau until newton_step stops; returns tau (ps and step: the last pass's).
template <typename T>
double newton_solve(const T* z, int64_t kp, T m, double scale, double tau, double tol,
                    double floor, double& lo, double& hi, T* e, PowerSums& ps, double& step) {
  const double beta_m1 = 1.0 / scale - 1.0;
  for (int it = 0; it < kMaxSteps; ++it) {
    ps = power_pass(z, kp, m, scale, tau, beta_m1, e);
    if (newton_step(tau, ps, scale, tol, floor, lo, hi, step)) break;
    tau += step;
  }
  return tau;
}

// n^(-scale) for counts n of keys, kept per task of rows (a head's rows share alpha, a tensor's
// rows their length): a table, refilled when alpha changes.
class CountPowers {
 public:
  double operator()(double n, double scale) {
    if (scale != scale_) {
      table_.assign(table_.size(), -1.0);
      scale_ = scale;
    }
    const size_t i = static_cast<size_t>(n);
    if (i >= table_.size()) table_.resize(i + 1, -1.0);
    if (table_[i] < 0.0) table_[i] = pow_d(n, -scale);
    return table_[i];
  }

 private:
  std::vector<double> table_;
  double scale_ = 0.0;
};

// The solve of one row between passes: alpha-entmax of z[0:k] into out (and slope unless
// null), with scratch buf (padded(k) keys) and e (2 padded(k): powers, gaps).
template <typename T>
struct RowSolve {
  const T* z;
  int64_t k;
  double alpha;
  T* out;
  T* slope;
  T* buf;
  T* e;
  CountPowers* powers;  // n^(-scale) of the task's rows
  int64_t kp = 0;
  T m = 0;
  double scale = 0.0, tau = 0.0, lo = 0.0, hi = 0.0, d = 0.0, tol = 0.0, floor = 0.0;
  PowerSums ps;
  RoughSums rs;
  int steps = 0;
  int rough = 0;            // rough passes left (float32 rows)
  bool next_rough = false;  // the next pass is rough
};

// Whether the pass after a Newton step on the norm N = mass^(1 / beta) from sums at tau should be
// rough: while a rough pass is left and the error that the step leaves, |N'' / 2 N'| step^2,
// is too large for the second-order finish at the next pass.
template <typename T>
bool wants_rough(const RowSolve<T>& r, double mass, double deriv, double bend, double step) {
  if (r.rough <= 0 || !(mass > 0.0)) return false;
  const double beta = 1.0 / r.scale;
  const double spread = std::max(bend - deriv * deriv / mass, 0.0);
  const double left = (beta - 1.0) * spread / (2.0 * std::max(deriv, kTiny)) * step * step;
  return beta * left > kRoughSwitch;
}

// Step 2, one pass's decision (r.ps at r.tau): true when r's threshold is r.tau + r.d.
template <typename T>
bool entmax_advance(RowSolve<T>& r) {
  if (newton_step(r.tau, r.ps, r.scale, r.tol, r.floor, r.lo, r.hi, r.d)) return true;
  if (++r.steps >= kMaxSteps) return true;  // (the finish takes tau + d from this pass)
  r.next_rough = wants_rough(r, r.ps.mass, r.ps.deriv, r.ps.bend, r.d);
  r.tau += r.d;
  return false;
}

// Step 2 after a rough pass (r.rs at r.tau): a Halley step on the norm N = mass^(1 / beta)
// (third order: from the derivatives of the mass, -beta sum g^(beta - 1), beta (beta - 1)
// sum g^(beta - 2), ...), or a Newton step where the Halley correction is large, with the bracket
// moved only where the rough mass is clear of 1 (within that margin tau is as good as a rough
// pass can tell, and the exact passes take over). The next pass is exact once the error the
// step leaves, |c2^2 - c3| |step|^3 (Halley) or |c2| step^2 (Newton) with ck = N^(k) / k! N',
// is small enough for the second-order finish.
template <typename T>
void entmax_advance_rough(RowSolve<T>& r) {
  const RoughSums& s = r.rs;
  --r.rough;
  r.next_rough = false;
  // The rough mass's error: the powers' (kRoughMargin) and that of tau rounded to float in the
  // gaps, beta 2^-23 sum g^(beta - 1) at most (|tau| <= 1), which wide supports make large.
  const double margin = kRoughMargin + 1.2e-7 / r.scale * s.deriv;
  if (!(std::abs(s.mass - 1.0) > margin)) return;
  if (s.mass > 1.0) r.lo = std::max(r.lo, r.tau);
  if (s.mass < 1.0) {
    if (r.tau <= r.lo) r.lo = -1.0;  // a start above the root (rounding): back to -1
    r.hi = std::min(r.hi, r.tau);
  }
  double next = 0.5 * (r.lo + r.hi);
  if (s.mass > 0.0) {
    const double sc = r.scale, beta = 1.0 / sc, inv = 1.0 / s.mass;
    // M^(k) / M for the mass M; N^(k) = sc N (terms in them), whose common factor cancels.
    const double r1 = -beta * s.deriv * inv, r2 = beta * (beta - 1.0) * s.bend * inv;
    const double r3 = -beta * (beta - 1.0) * (beta - 2.0) * s.bend3 * inv;
    const double n1 = r1, n2 = (sc - 1.0) * r1 * r1 + r2;
    const double n3 = (sc - 1.0) * (sc - 2.0) * r1 * r1 * r1 + 3.0 * (sc - 1.0) * r1 * r2 + r3;
    const double q = pow_float<true>(s.mass, sc);  // N
    const double newton = -(q - 1.0) / (sc * q * std::min(n1, -kTiny));
    const double c2 = n2 / (2.0 * n1), c3 = n3 / (6.0 * n1);
    const double half_l = -newton * c2;  // (N - 1) N'' / 2 N'^2
    double step = newton, left = std::abs(c2) * newton * newton;
    if (std::abs(half_l) <= 0.5) {
      step = newton / (1.0 - half_l);
      left = std::abs(c2 * c2 - c3) * std::abs(step * step * step);
    }
    if (r.tau + step >= r.lo && r.tau + step <= r.hi) {
      next = r.tau + step;
      r.next_rough = r.rough > 0 && beta * left > kRoughSwitch;
    } else {
      r.next_rough = r.rough > 0;
    }
  }
  r.tau = next;
}

// One pass of r at r.tau, rough (float32 rows, see entmax_power.h) or exact; true when r's
// threshold is r.tau + r.d.
template <typename T>
bool entmax_pass(RowSolve<T>& r) {
  if constexpr (std::is_same<T, float>::value) {
    if (r.next_rough) {
      r.rs = rough_pass(r.buf, r.kp, r.m, r.scale, r.tau);
      entmax_advance_rough(r);
      return false;
    }
  }
  r.ps = power_pass(r.buf, r.kp, r.m, r.scale, r.tau, 1.0 / r.scale - 1.0, r.e);
  return entmax_advance(r);
}

}  // namespace
