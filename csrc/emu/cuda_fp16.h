// Emulated cuda_fp16.h (see cuda_emu.h): __half as IEEE binary16 bits. Conversions round to
// nearest even and keep denormals; arithmetic computes in double, where sums, differences and
// products of two halves are exact, so each result is rounded once, as on the hardware.
#pragma once

#include <bit>
#include <cstdint>

#include "cuda_emu.h"

namespace wvq_emu {

// Rounds a double to the nearest binary16 (ties to even), denormals and infinities included.
inline uint16_t half_bits_from_double(double value) {
  const uint64_t bits = std::bit_cast<uint64_t>(value);
  const auto sign = static_cast<uint16_t>((bits >> 48) & 0x8000u);
  const uint64_t magnitude = bits & 0x7fffffffffffffffull;
  if (magnitude > 0x7ff0000000000000ull) return sign | 0x7e00u;  // NaN stays a (quiet) NaN
  if (magnitude >= 0x40effe0000000000ull) return sign | 0x7c00u;  // >= 65520 rounds to inf
  const int exponent = static_cast<int>(magnitude >> 52);
  const uint64_t mantissa = magnitude & 0xfffffffffffffull;
  // Normal halves (>= 2^-14) keep 10 of the 52 mantissa bits, and the rounding carry may enter
  // the exponent; denormal ones count units of 2^-24 of the significand with its leading 1.
  const bool normal = exponent >= 1009;
  const int shift = normal ? 42 : 1051 - exponent;
  if (shift >= 54) return sign;  // below half the smallest denormal
  const uint64_t significand = normal ? mantissa : mantissa | (1ull << 52);
  uint64_t kept = significand >> shift;
  if (normal) kept |= static_cast<uint64_t>(exponent - 1008) << 10;
  const uint64_t dropped = significand & ((1ull << shift) - 1);
  const uint64_t halfway = 1ull << (shift - 1);
  if (dropped > halfway || (dropped == halfway && (kept & 1u))) ++kept;
  return sign | static_cast<uint16_t>(kept);
}

inline float float_from_half_bits(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu, mantissa = bits & 0x3ffu;
  if (exponent == 0) {  // zero or denormal: mantissa * 2^-24 is exact in float
    const float value = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -value : value;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

}  // namespace wvq_emu

struct __half_raw {
  unsigned short x;
};

struct __half {
  unsigned short __x;

  __half() = default;
  constexpr __half(__half_raw raw) : __x(raw.x) {}
  __half(float value) : __x(::wvq_emu::half_bits_from_double(value)) {}
  __half(double value) : __x(::wvq_emu::half_bits_from_double(value)) {}
  __half(int value) : __half(static_cast<double>(value)) {}
  __half(long long value) : __half(static_cast<double>(value)) {}
  operator float() const { return ::wvq_emu::float_from_half_bits(__x); }
  operator __half_raw() const { return {__x}; }
};

struct __half2 {
  __half x, y;
};

inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half(float v) { return __half(v); }
inline __half __float2half_rn(float v) { return __half(v); }
inline __half __double2half(double v) { return __half(v); }
inline __half __int2half_rn(int v) { return __half(v); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short bits) { return __half_raw{bits}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return {__half(a), __half(a)}; }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }

namespace wvq_emu {
inline double half_value(__half h) { return static_cast<float>(h); }
}  // namespace wvq_emu

inline __half operator+(__half a, __half b) {
  return __half(::wvq_emu::half_value(a) + ::wvq_emu::half_value(b));
}
inline __half operator-(__half a, __half b) {
  return __half(::wvq_emu::half_value(a) - ::wvq_emu::half_value(b));
}
inline __half operator*(__half a, __half b) {
  return __half(::wvq_emu::half_value(a) * ::wvq_emu::half_value(b));
}
inline __half operator/(__half a, __half b) {
  return __half(::wvq_emu::half_value(a) / ::wvq_emu::half_value(b));
}
inline __half operator-(__half a) { return __ushort_as_half(a.__x ^ 0x8000u); }
inline __half& operator+=(__half& a, __half b) { return a = a + b; }
inline __half& operator-=(__half& a, __half b) { return a = a - b; }
inline __half& operator*=(__half& a, __half b) { return a = a * b; }
inline bool operator==(__half a, __half b) { return float(a) == float(b); }
inline bool operator!=(__half a, __half b) { return float(a) != float(b); }
inline bool operator<(__half a, __half b) { return float(a) < float(b); }
inline bool operator<=(__half a, __half b) { return float(a) <= float(b); }
inline bool operator>(__half a, __half b) { return float(a) > float(b); }
inline bool operator>=(__half a, __half b) { return float(a) >= float(b); }
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hsub(__half a, __half b) { return a - b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hdiv(__half a, __half b) { return a / b; }
inline __half __hneg(__half a) { return -a; }
inline __half __hmin(__half a, __half b) { return b < a ? b : a; }
inline __half __hmax(__half a, __half b) { return a < b ? b : a; }
inline bool __heq(__half a, __half b) { return a == b; }
inline bool __hlt(__half a, __half b) { return a < b; }
inline bool __hgt(__half a, __half b) { return a > b; }
inline bool __hisnan(__half a) { return std::isnan(float(a)); }
inline bool __hisinf(__half a) { return std::isinf(float(a)); }
