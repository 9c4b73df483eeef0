// Branch-free exp and log for scalars and 256-bit vectors, in double and in float.
//
// The entmax kernels raise gaps in (0, 1] to powers 1 / (alpha - 1) of up to 100 inside loops
// over rows held in cache. std::exp / std::log are scalar library calls there (glibc's vector
// versions need -ffast-math, which would break the -inf handling), so these are written as
// straight-line code on the bit patterns: range reduction by powers of two and a short
// polynomial (Taylor series of exp on |r| <= ln(2) / 2; of log(m) = 2 atanh((m - 1) / (m + 1))
// on m in [sqrt(1/2), sqrt(2))). Each function is a template over V: a scalar or a GCC / Clang
// vector of float or double (written once, so the vector code is the scalar code). The double
// versions come in two degrees (`Precise`: full double precision; otherwise ~1e-12 relative
// error); the float versions are accurate to a few ulp of float.

#pragma once

#include <cstdint>
#include <cstring>

#ifndef ATTNKIT_ALWAYS_INLINE
// Loop bodies and vector math must be inlined: GCC may otherwise call them (measured 1.3x
// slower passes, with the accumulators kept in memory).
#define ATTNKIT_ALWAYS_INLINE __attribute__((always_inline))
#endif

namespace attnkit_fastmath {

typedef float vfloat __attribute__((vector_size(32)));
typedef double vdouble __attribute__((vector_size(32)));
typedef float vfloat4 __attribute__((vector_size(16)));
typedef uint32_t vuint32 __attribute__((vector_size(32)));
typedef uint64_t vuint64 __attribute__((vector_size(32)));
typedef uint32_t vuint32x4 __attribute__((vector_size(16)));

// The unsigned integer type with the layout of V.
template <typename V>
struct Bits;
template <>
struct Bits<float> {
  typedef uint32_t type;
};
template <>
struct Bits<double> {
  typedef uint64_t type;
};
template <>
struct Bits<vfloat> {
  typedef vuint32 type;
};
template <>
struct Bits<vdouble> {
  typedef vuint64 type;
};
template <>
struct Bits<vfloat4> {
  typedef vuint32x4 type;
};

template <typename To, typename From>
inline To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

// ---------------------------------------------------------------- double

// exp(x) for x in [-708, 709]: 0 below (where double would go subnormal), clamped above.
template <bool Precise, typename V>
inline V exp_d(V x) {
  typedef typename Bits<V>::type U;
  const V zero = V{}, lo = zero - 708.0, hi = zero + 709.0, magic = zero + 0x1.8p52;
  V xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const V t = xc * 0x1.71547652b82fep0 + magic;  // k = round(x / ln 2), in the low bits
  const V k = t - magic;
  V r = xc - k * 0x1.62e42fee00000p-1;  // ln 2 in two parts: k * high part is exact
  r = r - k * 0x1.a39ef35793c76p-33;
  V p;  // Taylor series: degree 13 leaves 4e-18 relative error, degree 9 7e-12
  if (Precise) {
    p = zero + 1.6059043836821613e-10;
    p = p * r + 2.08767569878681e-09;
    p = p * r + 2.505210838544172e-08;
    p = p * r + 2.755731922398589e-07;
    p = p * r + 2.7557319223985893e-06;
  } else {
    p = zero + 2.7557319223985893e-06;
  }
  p = p * r + 2.48015873015873e-05;
  p = p * r + 0.0001984126984126984;
  p = p * r + 0.001388888888888889;
  p = p * r + 0.008333333333333333;
  p = p * r + 0.041666666666666664;
  p = p * r + 0.16666666666666666;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const U ki = bit_cast<U>(t) - bit_cast<U>(magic);  // k mod 2^64, exact
  const V y = p * bit_cast<V>((ki + 1023u) << 52);
  return x < lo ? zero : y;
}

// log(x) for a positive normal x.
template <bool Precise, typename V>
inline V log_d(V x) {
  typedef typename Bits<V>::type U;
  // x = 2^e m with m in [sqrt(1/2), sqrt(2)): offsetting the bits by 1 - sqrt(1/2) moves the
  // exponent boundary there without a select.
  const uint64_t kSqrtHalf = 0x3FE6A09E667F3BCDull;
  const U w = bit_cast<U>(x) + (0x3FF0000000000000ull - kSqrtHalf);
  // The exponent as a double without an int64 -> double conversion (none in AVX2).
  const V e = bit_cast<V>((w >> 52) | 0x4330000000000000ull) - (0x1p52 + 1023.0);
  const V m = bit_cast<V>((w & 0x000FFFFFFFFFFFFFull) + kSqrtHalf);
  const V s = (m - 1.0) / (m + 1.0);  // |s| < 0.172
  const V z = s * s;
  V q = V{};  // 1/3 + z/5 + z^2/7 + ...: up to z^10 (2e-17 relative error) or z^6 (1e-12)
  if (Precise) {
    q = q + 1.0 / 21.0;
    q = q * z + 1.0 / 19.0;
    q = q * z + 1.0 / 17.0;
    q = q * z + 1.0 / 15.0;
    q = q * z + 1.0 / 13.0;
  } else {
    q = q + 1.0 / 13.0;
  }
  q = q * z + 1.0 / 11.0;
  q = q * z + 1.0 / 9.0;
  q = q * z + 1.0 / 7.0;
  q = q * z + 1.0 / 5.0;
  q = q * z + 1.0 / 3.0;
  const V log_m = 2.0 * s + 2.0 * s * (z * q);
  return e * 0x1.62e42fee00000p-1 + (log_m + e * 0x1.a39ef35793c76p-33);
}

// a^b for a > 0 (row-level scalars: cheaper than std::pow, as accurate as needed there).
inline double pow_d(double a, double b) { return exp_d<true>(b * log_d<true>(a)); }

// a^b for |b| <= 1: near a = 1 (within 1e-3, where thresholds converge) by the series of
// log(1 + u) and exp to the sixth power (truncation below 1e-20), else pow_d.
ATTNKIT_ALWAYS_INLINE inline double pow_near_one(double a, double b) {
  const double u = a - 1.0;  // exact for a in [0.5, 2]
  if (!(u < 1e-3 && u > -1e-3)) return pow_d(a, b);
  const double l =
      u * (1.0 + u * (-0.5 + u * (1.0 / 3.0 + u * (-0.25 + u * (0.2 + u * (-1.0 / 6.0))))));
  const double v = b * l;
  return 1.0 +
         v * (1.0 + v * (0.5 + v * (1.0 / 6.0 + v * (1.0 / 24.0 + v * (1.0 / 120.0 + v / 720.0)))));
}

// ---------------------------------------------------------------- float

// x = 2^e m with m in [sqrt(1/2), sqrt(2)) for a positive normal float x (offsetting the bits
// by 1 - sqrt(1/2) moves the exponent boundary there without a select): e as a float.
template <typename V>
ATTNKIT_ALWAYS_INLINE inline V split_exponent(V x, V& m) {
  typedef typename Bits<V>::type U;
  const uint32_t kSqrtHalf = 0x3F3504F3u;
  const U w = bit_cast<U>(x) + (0x3F800000u - kSqrtHalf);
  m = bit_cast<V>((w & 0x007FFFFFu) + kSqrtHalf);
  return bit_cast<V>((w >> 23) | 0x4B000000u) - (8388608.0f + 127.0f);
}

// p 2^k for the integer k that rounding added into the low bits of t = k + magic.
template <typename V>
ATTNKIT_ALWAYS_INLINE inline V times_power_of_two(V p, V t, V magic) {
  typedef typename Bits<V>::type U;
  const U ki = bit_cast<U>(t) - bit_cast<U>(magic);
  return p * bit_cast<V>((ki + 127u) << 23);
}

// exp(x) for x <= 0; 0 below -87 (where float would go subnormal).
template <typename V>
ATTNKIT_ALWAYS_INLINE inline V exp_f(V x) {
  const V zero = V{}, lo = zero - 87.0f, magic = zero + 12582912.0f;  // 1.5 * 2^23
  const V xc = x < lo ? lo : x;
  const V t = xc * 1.44269504f + magic;
  const V k = t - magic;
  V r = xc - k * 0.693359375f;  // ln 2 = 0.693359375 - 2.12194440e-4
  r = r + k * 2.12194440e-4f;
  V p = zero + 1.0f / 5040.0f;  // degree 7: 5e-9 relative error
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return x < lo ? zero : times_power_of_two(p, t, magic);
}

// log(x) for a positive normal x.
template <typename V>
ATTNKIT_ALWAYS_INLINE inline V log_f(V x) {
  V m;
  const V e = split_exponent(x, m);
  const V s = (m - 1.0f) / (m + 1.0f);
  const V z = s * s;
  V q = V{} + 1.0f / 9.0f;  // up to z^4: 2e-9 relative error
  q = q * z + 1.0f / 7.0f;
  q = q * z + 1.0f / 5.0f;
  q = q * z + 1.0f / 3.0f;
  const V log_m = 2.0f * s + 2.0f * s * (z * q);
  return e * 0.693359375f + (log_m - e * 2.12194440e-4f);
}

// log2(x) for a positive normal float x, to 3e-6 (absolute), without a division: a polynomial
// in u = m - 1 for x = 2^e m, m in [sqrt(1/2), sqrt(2)) (a least-squares fit, degree 6). For the
// rough passes of alpha-entmax (see entmax_power.h).
template <typename V>
ATTNKIT_ALWAYS_INLINE inline V log2_rough(V x) {
  V m;
  const V e = split_exponent(x, m);
  const V u = m - 1.0f;
  V p = V{} - 0.20824214f;
  p = p * u + 0.32325346f;
  p = p * u - 0.36735579f;
  p = p * u + 0.47919366f;
  p = p * u - 0.72113238f;
  p = p * u + 1.44271864f;
  return e + u * p;
}

// 2^x for x <= 120 to 3e-6 relative (a least-squares fit of degree 4 on [-1/2, 1/2], exact at
// integers); 0 below -126 (where float would go subnormal). For the rough passes, with
// log2_rough.
template <typename V>
ATTNKIT_ALWAYS_INLINE inline V exp2_rough(V x) {
  const V zero = V{}, lo = zero - 126.0f, magic = zero + 12582912.0f;  // 1.5 * 2^23
  const V xc = x < lo ? lo : x;
  const V t = xc + magic;  // k = round(x), in the low bits
  const V f = xc - (t - magic);
  V p = zero + 0.00960040f;
  p = p * f + 0.05591689f;
  p = p * f + 0.24023718f;
  p = p * f + 0.69312199f;
  p = p * f + 1.0f;
  return x < lo ? zero : times_power_of_two(p, t, magic);
}

// a^b for |b| <= 1 where float precision is enough away from a = 1: the series of pow_near_one
// within 1e-3 of 1, else log_f and exp_f (1e-7 relative; the Newton steps of exact passes, one of
// which ends a solve at alpha = 2, where a^0 must be 1) or, when Rough, log2_rough and exp2_rough
// (1e-5; the steps of rough passes, without log_f's division on the chain between passes).
template <bool Rough>
ATTNKIT_ALWAYS_INLINE inline double pow_float(double a, double b) {
  const double u = a - 1.0;
  if (u < 1e-3 && u > -1e-3) return pow_near_one(a, b);
  if (!(a > 1e-30)) return pow_d(a, b);
  const float fa = static_cast<float>(a), fb = static_cast<float>(b);
  return Rough ? exp2_rough(fb * log2_rough(fa)) : exp_f(fb * log_f(fa));
}

}  // namespace attnkit_fastmath
